//! One thread per VM that fires timer deadlines (LAPIC timers, PIT channel 0) and turns irqfd
//! writes into interrupts the moment they happen, waking halted vCPUs.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::IrqChipCore;

const TOKEN_STOP: u64 = 0;
const TOKEN_KICK: u64 = 1;
const TOKEN_TIMER: u64 = 2;
const TOKEN_IRQFD: u64 = 3;

/// The thread and what it listens to. Dropping it stops the thread.
pub struct Service {
    epoll: Arc<Epoll>,
    stop: EventFd,
    irqfds: Arc<Mutex<Vec<(EventFd, u32)>>>,
    thread: Option<JoinHandle<()>>,
}

fn add(epoll: &Epoll, fd: i32, token: u64) -> std::io::Result<()> {
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
}

impl Service {
    pub fn start(core: Arc<IrqChipCore>) -> std::io::Result<Service> {
        let epoll = Arc::new(Epoll::new()?);
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let timer = TimerFd::new()?;
        add(&epoll, stop.as_raw_fd(), TOKEN_STOP)?;
        add(&epoll, core.timer_kick.as_raw_fd(), TOKEN_KICK)?;
        add(&epoll, timer.as_raw_fd(), TOKEN_TIMER)?;
        let irqfds = Arc::new(Mutex::new(Vec::new()));
        let (ep, fds) = (epoll.clone(), irqfds.clone());
        let thread = std::thread::Builder::new().name("vmr-emu-irq".into()).spawn(move || {
            vmr_hypervisor::thread_hooks::thread_started();
            run(&core, &ep, timer, &fds)
        })?;
        Ok(Service { epoll, stop, irqfds, thread: Some(thread) })
    }

    /// Raises (edge) `gsi` whenever `fd` is written.
    pub fn add_irqfd(&self, fd: EventFd, gsi: u32) -> std::io::Result<()> {
        let mut fds = self.irqfds.lock().unwrap_or_else(|e| e.into_inner());
        add(&self.epoll, fd.as_raw_fd(), TOKEN_IRQFD + fds.len() as u64)?;
        fds.push((fd, gsi));
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(core: &IrqChipCore, epoll: &Epoll, mut timer: TimerFd, irqfds: &Mutex<Vec<(EventFd, u32)>>) {
    let mut events = vec![EpollEvent::default(); 16];
    loop {
        let now = core.clock.now();
        let armed = match core.service_timers(now) {
            // At least 1 us ahead: a zero timeout would disarm the timerfd.
            Some(deadline) => timer.reset(Duration::from_nanos(deadline.saturating_sub(now).max(1000)), None),
            None => timer.clear(),
        };
        if let Err(e) = armed {
            tracing::error!("emu irqchip: timerfd: {e}; timers stop");
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("emu irqchip: epoll_wait: {e}; interrupts stop");
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => return,
                TOKEN_KICK => {
                    let _ = core.timer_kick.read();
                }
                // Readable, so this read returns the expiration count at once.
                TOKEN_TIMER => {
                    let _ = timer.wait();
                }
                token => {
                    let gsi = {
                        let fds = irqfds.lock().unwrap_or_else(|e| e.into_inner());
                        fds.get((token - TOKEN_IRQFD) as usize)
                            .and_then(|(fd, gsi)| fd.read().ok().map(|_| *gsi))
                    };
                    if let Some(gsi) = gsi {
                        core.set_irq(gsi, true);
                        core.set_irq(gsi, false);
                    }
                }
            }
        }
    }
}
