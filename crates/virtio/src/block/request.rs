//! Executing one virtio-blk request (virtio 1.2, 5.2.6).
//!
//! The chain is read through virtio-queue's `Reader`/`Writer`, so the header, data and status may
//! be split over descriptors in any way. Data moves through a bounded bounce buffer in chunks, so
//! a request of any length costs at most [`CHUNK`] bytes of host memory.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vmr_block::{AlignedBuf, DiskImage, SECTOR_SIZE};

use super::{features as blk, SERIAL_LEN};
use crate::metrics::BlockMetrics;
use crate::GuestMemory;

pub(crate) const T_IN: u32 = 0;
pub(crate) const T_OUT: u32 = 1;
pub(crate) const T_FLUSH: u32 = 4;
pub(crate) const T_GET_ID: u32 = 8;
pub(crate) const T_DISCARD: u32 = 11;
pub(crate) const T_WRITE_ZEROES: u32 = 13;

pub(crate) const S_OK: u8 = 0;
pub(crate) const S_IOERR: u8 = 1;
pub(crate) const S_UNSUPP: u8 = 2;

/// Bounce buffer size for data transfers.
pub(crate) const CHUNK: usize = 256 << 10;
/// Segments accepted in one discard / write-zeroes request (advertised in config space).
pub(crate) const MAX_DISCARD_SEG: u32 = 1;
/// Largest discard / write-zeroes segment in sectors (advertised in config space).
pub(crate) const MAX_DISCARD_SECTORS: u32 = 1 << 22;
const WRITE_ZEROES_F_UNMAP: u32 = 1;

/// One block device's request executor, owned by its worker thread.
pub(crate) struct Executor {
    pub(crate) disk: Box<dyn DiskImage>,
    pub(crate) serial: [u8; SERIAL_LEN],
    pub(crate) acked_features: u64,
    /// Page-aligned, so aligned guest requests on a `cache=none` disk need no second bounce.
    buf: AlignedBuf,
    metrics: std::sync::Arc<BlockMetrics>,
}

/// Outcome of a request: status byte and number of data bytes written to the guest.
type Outcome = (u8, u32);

impl Executor {
    pub(crate) fn new(
        disk: Box<dyn DiskImage>,
        serial: [u8; SERIAL_LEN],
        acked_features: u64,
        metrics: std::sync::Arc<BlockMetrics>,
    ) -> Self {
        Executor { disk, serial, acked_features, buf: AlignedBuf::new(CHUNK), metrics }
    }

    /// Executes the request in `chain` and returns the used length (data written + status byte).
    pub(crate) fn execute(&mut self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> u32 {
        let Ok(mut writer) = Writer::<()>::new(mem, chain.clone()) else {
            // Unwritable memory in the chain: there is no way to report a status.
            return 0;
        };
        let Some(status_at) = writer.available_bytes().checked_sub(1) else {
            return 0;
        };
        let Ok(mut status_writer) = writer.split_at(status_at) else { return 0 };
        let start = std::time::Instant::now();
        let (status, written) = match Reader::<()>::new(mem, chain) {
            Ok(reader) => self.dispatch(reader, &mut writer),
            Err(_) => (S_IOERR, 0),
        };
        match status {
            S_IOERR => self.metrics.counters.execute_fails.inc(),
            S_UNSUPP => self.metrics.counters.invalid_reqs_count.inc(),
            _ => {}
        }
        self.metrics.request_latency.record(start.elapsed());
        if status_writer.write_all(&[status]).is_err() {
            return written;
        }
        written.saturating_add(1)
    }

    pub(crate) fn metrics(&self) -> &BlockMetrics {
        &self.metrics
    }

    /// Data bytes a request moves, what its bandwidth is charged: the data of a read or a write,
    /// 0 for other requests and for chains too broken to parse (they fail at once anyway).
    pub(crate) fn data_len(mem: &GuestMemory, chain: &DescriptorChain<&GuestMemory>) -> u64 {
        let Ok(mut reader) = Reader::<()>::new(mem, chain.clone()) else { return 0 };
        let mut header = [0u8; 16];
        if reader.read_exact(&mut header).is_err() {
            return 0;
        }
        match u32::from_le_bytes([header[0], header[1], header[2], header[3]]) {
            T_IN => Writer::<()>::new(mem, chain.clone())
                .map_or(0, |w| w.available_bytes().saturating_sub(1) as u64),
            T_OUT => reader.available_bytes() as u64,
            _ => 0,
        }
    }

    fn dispatch(&mut self, mut reader: Reader<'_>, writer: &mut Writer<'_>) -> Outcome {
        let mut header = [0u8; 16];
        if reader.read_exact(&mut header).is_err() {
            return (S_IOERR, 0);
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        self.count(kind, reader.available_bytes(), writer.available_bytes());
        match kind {
            T_IN => self.read(sector, writer),
            T_OUT => (self.write(sector, &mut reader), 0),
            T_FLUSH => (status_of(self.disk.flush()), 0),
            T_GET_ID => {
                let n = writer.available_bytes().min(SERIAL_LEN);
                match writer.write_all(&self.serial[..n]) {
                    Ok(()) => (S_OK, n as u32),
                    Err(_) => (S_IOERR, 0),
                }
            }
            T_DISCARD if self.acked_features & blk::DISCARD != 0 => {
                (self.discard_or_zero(&mut reader, false), 0)
            }
            T_WRITE_ZEROES if self.acked_features & blk::WRITE_ZEROES != 0 => {
                (self.discard_or_zero(&mut reader, true), 0)
            }
            _ => (S_UNSUPP, 0),
        }
    }

    /// Counts a request by kind (before it runs; failures are counted apart).
    fn count(&self, kind: u32, readable: usize, writable: usize) {
        let c = &self.metrics.counters;
        match kind {
            T_IN => {
                c.read_count.inc();
                c.read_bytes.add(writable as u64);
            }
            T_OUT => {
                c.write_count.inc();
                c.write_bytes.add(readable as u64);
            }
            T_FLUSH => c.flush_count.inc(),
            T_GET_ID => c.get_id_count.inc(),
            T_DISCARD | T_WRITE_ZEROES => c.discard_count.inc(),
            _ => {}
        }
    }

    /// Byte offset of `sector` if `len` bytes from there are a whole number of sectors on disk.
    fn byte_range(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (len.is_multiple_of(SECTOR_SIZE) && end <= self.disk.len()).then_some(offset)
    }

    fn read(&mut self, sector: u64, writer: &mut Writer<'_>) -> Outcome {
        let len = writer.available_bytes() as u64;
        let Some(mut offset) = self.byte_range(sector, len) else { return (S_IOERR, 0) };
        let mut done = 0u32;
        while writer.available_bytes() > 0 {
            let n = writer.available_bytes().min(CHUNK);
            let buf = &mut self.buf[..n];
            if self.disk.read_at(buf, offset).is_err() || writer.write_all(buf).is_err() {
                return (S_IOERR, done);
            }
            offset += n as u64;
            done = done.saturating_add(n as u32);
        }
        (S_OK, done)
    }

    fn write(&mut self, sector: u64, reader: &mut Reader<'_>) -> u8 {
        if self.disk.is_read_only() {
            return S_IOERR;
        }
        let len = reader.available_bytes() as u64;
        let Some(mut offset) = self.byte_range(sector, len) else { return S_IOERR };
        while reader.available_bytes() > 0 {
            let n = reader.available_bytes().min(CHUNK);
            let buf = &mut self.buf[..n];
            if reader.read_exact(buf).is_err() || self.disk.write_at(buf, offset).is_err() {
                return S_IOERR;
            }
            offset += n as u64;
        }
        S_OK
    }

    /// Discard or write-zeroes: a list of 16-byte segments {sector, num_sectors, flags}.
    fn discard_or_zero(&mut self, reader: &mut Reader<'_>, zero: bool) -> u8 {
        if self.disk.is_read_only() {
            return S_IOERR;
        }
        let len = reader.available_bytes();
        if len == 0 || !len.is_multiple_of(16) || len / 16 > MAX_DISCARD_SEG as usize {
            return S_UNSUPP;
        }
        while reader.available_bytes() >= 16 {
            let mut seg = [0u8; 16];
            if reader.read_exact(&mut seg).is_err() {
                return S_IOERR;
            }
            let sector = u64::from_le_bytes(seg[..8].try_into().unwrap_or_default());
            let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
            let allowed = if zero { WRITE_ZEROES_F_UNMAP } else { 0 };
            if flags & !allowed != 0 || sectors > MAX_DISCARD_SECTORS {
                return S_UNSUPP;
            }
            let bytes = u64::from(sectors) * SECTOR_SIZE;
            let Some(offset) = self.byte_range(sector, bytes) else { return S_IOERR };
            let result = if zero {
                self.disk.write_zeroes(offset, bytes, flags & WRITE_ZEROES_F_UNMAP != 0)
            } else {
                self.disk.discard(offset, bytes)
            };
            if result.is_err() {
                return S_IOERR;
            }
        }
        S_OK
    }
}

fn status_of(result: Result<(), vmr_block::BlockError>) -> u8 {
    match result {
        Ok(()) => S_OK,
        Err(e) => {
            tracing::warn!("virtio-blk: {e}");
            S_IOERR
        }
    }
}
