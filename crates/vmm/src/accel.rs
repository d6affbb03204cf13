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

/// Opens the backend `accel` asks for. `Auto` prefers KVM when it can run unmodified guests,
/// and falls back to the software CPU otherwise.
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
            reason: "requested with --accel emu (vmr's software x86-64 CPU)".into(),
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
                    // Without the advice to use --accel emu: that is what auto does now.
                    Err(why) => why.reason(),
                },
                Err(e) => e.to_string(),
            };
            let why = kvm_problem;
            Ok(BackendChoice {
                hypervisor: Arc::new(vmr_emu::EmuHypervisor::new()),
                reason: format!("{why}; using vmr's software x86-64 CPU, slower than KVM"),
            })
        }
    }
}
