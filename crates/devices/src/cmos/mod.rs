//! CMOS RAM and MC146818 real-time clock (ports 0x70/0x71).
//!
//! The clock reads the host's current UTC time on every access, in BCD or binary and 12/24-hour
//! format as register B selects; guest writes to the time registers are ignored (the guest
//! clock follows the host). Status registers A-D behave as a clock that is never mid-update
//! and raises no interrupts. Bytes 0x15-0x18, 0x30-0x31, 0x34-0x35 and 0x5b-0x5d report the
//! memory size as firmware does. Bit 7 of the index (NMI disable) is ignored.

mod persist;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::BusDevice;

/// Index port (data port is the next one).
pub const CMOS_PORT: u16 = 0x70;
/// Length of the range (index + data).
pub const CMOS_PORT_LEN: u16 = 2;

const RAM_SIZE: usize = 128;
const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

const REG_A_DEFAULT: u8 = 0x26; // 32.768 kHz time base, 1024 Hz rate
const REG_A_UIP: u8 = 0x80;
const REG_B_24H: u8 = 0x02;
const REG_B_BINARY: u8 = 0x04;
const REG_D_VALID: u8 = 0x80;
const HOUR_PM: u8 = 0x80;

/// Source of the current time in seconds since the Unix epoch (UTC).
pub type Clock = Box<dyn Fn() -> i64 + Send>;

/// Saved state: the index register and the 128 bytes of CMOS RAM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosState {
    /// Selected register (0..128).
    pub index: u8,
    /// CMOS RAM contents (128 bytes; time registers are recomputed on read).
    pub ram: Vec<u8>,
}

/// The CMOS/RTC. Insert on the PIO bus at [`CMOS_PORT`], length [`CMOS_PORT_LEN`].
pub struct Cmos {
    index: u8,
    ram: [u8; RAM_SIZE],
    clock: Clock,
}

/// Wall-clock seconds since the epoch (the RTC's default time source).
pub fn host_clock() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Calendar fields of a Unix time (proleptic Gregorian, UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    weekday: u8, // 1 = Sunday
    hour: u8,
    minute: u8,
    second: u8,
}

fn civil_from_unix(t: i64) -> DateTime {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    DateTime {
        year,
        month,
        day,
        weekday: ((days + 4).rem_euclid(7) + 1) as u8, // 1970-01-01 was a Thursday
        hour: (secs / 3600) as u8,
        minute: (secs / 60 % 60) as u8,
        second: (secs % 60) as u8,
    }
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

impl Cmos {
    /// A CMOS for a guest with `mem_below_4g` bytes of RAM below 4 GiB and `mem_above_4g`
    /// above, reading the host clock.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        Self::with_clock(mem_below_4g, mem_above_4g, Box::new(host_clock))
    }

    /// Like [`Cmos::new`] with another time source.
    pub fn with_clock(mem_below_4g: u64, mem_above_4g: u64, clock: Clock) -> Self {
        let mut ram = [0u8; RAM_SIZE];
        ram[usize::from(REG_A)] = REG_A_DEFAULT;
        ram[usize::from(REG_B)] = REG_B_24H;
        ram[usize::from(REG_D)] = REG_D_VALID;
        let put16 = |ram: &mut [u8; RAM_SIZE], at: usize, v: u64| {
            let v = v.min(0xffff) as u16;
            ram[at..at + 2].copy_from_slice(&v.to_le_bytes());
        };
        put16(&mut ram, 0x15, 640); // base memory, KiB
        let ext_kib = mem_below_4g.saturating_sub(1 << 20) >> 10;
        put16(&mut ram, 0x17, ext_kib);
        put16(&mut ram, 0x30, ext_kib);
        put16(&mut ram, 0x34, mem_below_4g.saturating_sub(16 << 20) >> 16);
        let high = (mem_above_4g >> 16).min(0xff_ffff) as u32;
        ram[0x5b..0x5e].copy_from_slice(&high.to_le_bytes()[..3]);
        Cmos { index: 0, ram, clock }
    }

    /// Restores a CMOS from [`Cmos::state`]; missing RAM bytes read as zero.
    pub fn from_state(state: &CmosState, clock: Clock) -> Self {
        let mut ram = [0u8; RAM_SIZE];
        for (dst, src) in ram.iter_mut().zip(&state.ram) {
            *dst = *src;
        }
        Cmos { index: state.index & 0x7f, ram, clock }
    }

    /// The CMOS state, for snapshots.
    pub fn state(&self) -> CmosState {
        CmosState { index: self.index, ram: self.ram.to_vec() }
    }

    fn encode(&self, v: u8) -> u8 {
        if self.ram[usize::from(REG_B)] & REG_B_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.ram[usize::from(REG_B)] & REG_B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn read_register(&self, index: u8) -> u8 {
        let now = || civil_from_unix((self.clock)());
        match index {
            REG_SECONDS => self.encode(now().second),
            REG_MINUTES => self.encode(now().minute),
            REG_HOURS => self.encode_hour(now().hour),
            REG_WEEKDAY => self.encode(now().weekday),
            REG_DAY => self.encode(now().day),
            REG_MONTH => self.encode(now().month),
            REG_YEAR => self.encode(now().year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(now().year.div_euclid(100).clamp(0, 99) as u8),
            REG_A => self.ram[usize::from(REG_A)] & !REG_A_UIP,
            REG_C => 0, // no interrupt flags ever
            REG_D => REG_D_VALID,
            i => self.ram[usize::from(i & 0x7f)],
        }
    }

    fn write_register(&mut self, index: u8, value: u8) {
        match index {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH | REG_YEAR
            | REG_CENTURY => {}
            REG_A => self.ram[usize::from(REG_A)] = value & !REG_A_UIP,
            REG_C | REG_D => {}
            i => self.ram[usize::from(i & 0x7f)] = value,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else { return };
        *first = match offset {
            0 => self.index,
            1 => self.read_register(self.index),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 => self.index = value & 0x7f, // bit 7 is the NMI mask
            1 => self.write_register(self.index, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29 23:59:58 UTC, a Thursday.
    const LEAP_NIGHT: i64 = 1_709_251_198;

    fn cmos_at(t: i64) -> Cmos {
        Cmos::with_clock(3 << 30, 5 << 30, Box::new(move || t))
    }

    fn reg(c: &mut Cmos, index: u8) -> u8 {
        c.write(0, &[index | 0x80]);
        let mut b = [0];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn calendar_conversion() {
        let d = civil_from_unix(LEAP_NIGHT);
        assert_eq!(
            (d.year, d.month, d.day, d.hour, d.minute, d.second, d.weekday),
            (2024, 2, 29, 23, 59, 58, 5)
        );
        let epoch = civil_from_unix(0);
        assert_eq!((epoch.year, epoch.month, epoch.day, epoch.weekday), (1970, 1, 1, 5));
        let before = civil_from_unix(-1);
        assert_eq!((before.year, before.month, before.day, before.second), (1969, 12, 31, 59));
        assert_eq!(civil_from_unix(951_782_400).month, 2, "2000-02-29");
        assert_eq!(civil_from_unix(951_782_400).day, 29);
    }

    #[test]
    fn time_in_bcd_and_binary() {
        let mut c = cmos_at(LEAP_NIGHT);
        assert_eq!(reg(&mut c, REG_SECONDS), 0x58);
        assert_eq!(reg(&mut c, REG_HOURS), 0x23);
        assert_eq!(reg(&mut c, REG_DAY), 0x29);
        assert_eq!(reg(&mut c, REG_MONTH), 0x02);
        assert_eq!(reg(&mut c, REG_YEAR), 0x24);
        assert_eq!(reg(&mut c, REG_CENTURY), 0x20);
        c.write(0, &[REG_B]);
        c.write(1, &[REG_B_24H | REG_B_BINARY]);
        assert_eq!(reg(&mut c, REG_MINUTES), 59);
        assert_eq!(reg(&mut c, REG_YEAR), 24);
        c.write(0, &[REG_B]);
        c.write(1, &[REG_B_BINARY]); // 12-hour mode
        assert_eq!(reg(&mut c, REG_HOURS), 11 | HOUR_PM);
        let mut c = cmos_at(LEAP_NIGHT - 23 * 3600);
        assert_eq!(reg(&mut c, REG_HOURS), 0x00);
        c.write(0, &[REG_B]);
        c.write(1, &[0]);
        assert_eq!(reg(&mut c, REG_HOURS), 0x12, "midnight is 12 AM");
    }

    #[test]
    fn status_registers_and_memory_size() {
        let mut c = cmos_at(0);
        assert_eq!(reg(&mut c, REG_A) & REG_A_UIP, 0);
        assert_eq!(reg(&mut c, REG_C), 0);
        assert_eq!(reg(&mut c, REG_D), REG_D_VALID);
        c.write(0, &[REG_A]);
        c.write(1, &[0xff]);
        assert_eq!(reg(&mut c, REG_A), 0x7f);
        let below = u16::from_le_bytes([reg(&mut c, 0x34), reg(&mut c, 0x35)]);
        assert_eq!(u64::from(below), ((3u64 << 30) - (16 << 20)) >> 16);
        let above = u32::from_le_bytes([reg(&mut c, 0x5b), reg(&mut c, 0x5c), reg(&mut c, 0x5d), 0]);
        assert_eq!(u64::from(above), (5u64 << 30) >> 16);
        assert_eq!(u16::from_le_bytes([reg(&mut c, 0x30), reg(&mut c, 0x31)]), 0xffff);
        assert_eq!(u16::from_le_bytes([reg(&mut c, 0x15), reg(&mut c, 0x16)]), 640);
    }

    #[test]
    fn ram_state_and_hostile_access() {
        let mut c = cmos_at(LEAP_NIGHT);
        c.write(0, &[0x40]);
        c.write(1, &[0x99]);
        c.write(0, &[REG_SECONDS]);
        c.write(1, &[0x00]); // ignored: the clock follows the host
        assert_eq!(reg(&mut c, REG_SECONDS), 0x58);
        let state = c.state();
        let json = serde_json::to_string(&state).unwrap();
        let back: CmosState = serde_json::from_str(&json).unwrap();
        let mut r = Cmos::from_state(&back, Box::new(|| 0));
        assert_eq!(reg(&mut r, 0x40), 0x99);
        let mut short = Cmos::from_state(&CmosState { index: 0xff, ram: vec![1; 3] }, Box::new(|| 0));
        for index in 0..=255u8 {
            reg(&mut short, index);
            short.write(1, &[index]);
        }
        for offset in [2u64, 100, u64::MAX] {
            let mut b = [0u8; 8];
            short.read(offset, &mut b);
            short.write(offset, &b);
        }
        short.read(0, &mut []);
        short.write(1, &[]);
        let mut far = cmos_at(i64::MAX);
        let mut near = cmos_at(i64::MIN);
        for i in 0..14 {
            reg(&mut far, i);
            reg(&mut near, i);
        }
        reg(&mut far, REG_CENTURY);
    }
}
