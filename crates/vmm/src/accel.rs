//! Choosing the execution backend (`--accel`).

use std::sync::Arc;

use vmr_hypervisor::Hypervisor;

use crate::config::Accel;
use crate::VmmError;

/// The backend that will run the guest, and why it was chosen.
pub struct BackendChoice {
    pub hypervisor: Arc<dyn Hypervisor>,
    /// One line for the user: why this backend.
    pub reason: String,
}

/// Opens the backend `accel` asks for. `Auto` prefers KVM when it can run unmodified guests.
pub fn select_backend(accel: Accel) -> Result<BackendChoice, VmmError> {
    match accel {
        Accel::Kvm => {
            let kvm = vmr_kvm::Kvm::new()?;
            vmr_kvm::can_run_unmodified_guests()
                .map_err(|why| VmmError::NoAccelerator(format!("--accel kvm: {why}")))?;
            Ok(BackendChoice { hypervisor: Arc::new(kvm), reason: "requested with --accel kvm".into() })
        }
        Accel::Emu => Ok(BackendChoice {
            hypervisor: Arc::new(vmr_emu::EmuHypervisor::new()),
            reason: format!("requested with --accel emu; {EMU_LIMITS}"),
        }),
        Accel::Auto => {
            let kvm_problem = match vmr_kvm::Kvm::new() {
                Ok(kvm) => match vmr_kvm::can_run_unmodified_guests() {
                    Ok(()) => {
                        return Ok(BackendChoice {
                            hypervisor: Arc::new(kvm),
                            reason: "/dev/kvm is usable".into(),
                        })
                    }
                    Err(why) => why,
                },
                Err(e) => e.to_string(),
            };
            Err(VmmError::NoAccelerator(format!(
                "no usable accelerator: {kvm_problem}; {EMU_LIMITS} (--accel emu runs small guests)"
            )))
        }
    }
}

/// What the software CPU cannot do yet; `auto` does not choose it until it boots Linux.
const EMU_LIMITS: &str =
    "the software CPU has no x87/SSE arithmetic or interrupt controllers yet and cannot boot Linux";
