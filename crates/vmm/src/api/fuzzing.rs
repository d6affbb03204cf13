//! Entry point of the API fuzz target (`crates/vmm/fuzz`): raw bytes as one HTTP request's
//! method, path and body, through the router and the request handler of a VMM with no VM.

use std::cell::RefCell;

use super::router;
use super::VmmRequest;
use crate::api::schema::ActionType;
use crate::Vmm;

thread_local! {
    static VMM: RefCell<Option<Vmm>> = const { RefCell::new(None) };
}

/// Input: `METHOD PATH\n` then the body. Checks that every answer is a status with a one-line
/// JSON `fault_message` or a JSON body, whatever the input.
pub fn request(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (line, body) = data.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let (method, path) = line.split_once(' ').unwrap_or((&line, "/"));
    let result = match router::parse(method, path, body) {
        // Booting a VM and creating log files are not what this target explores.
        // Loading a snapshot boots one too (and reads files the input names).
        Ok(
            VmmRequest::Action(ActionType::InstanceStart)
            | VmmRequest::PutLogger(_)
            | VmmRequest::LoadSnapshot(_),
        ) => return,
        Ok(request) => VMM.with(|cell| {
            let mut slot = cell.borrow_mut();
            let vmm = slot.get_or_insert_with(|| Vmm::new(crate::Accel::Emu, None).expect("VMM"));
            vmm.handle_request(request)
        }),
        Err(e) => Err(e),
    };
    let (status, text) = router::render(&result);
    assert!((200..600).contains(&status));
    if let Some(text) = text {
        assert!(!text.contains('\n'), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).expect("answers are JSON");
        if result.is_err() {
            assert!(value["fault_message"].is_string());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn corpus_seeds_run() {
        for seed in [
            &b"PUT /machine-config\n{\"vcpu_count\":2,\"mem_size_mib\":64}"[..],
            b"PATCH /vm\n{\"state\":\"Paused\"}",
            b"GET /vm/config\n",
            b"PUT /drives/a\n{\"drive_id\":\"a\",\"path_on_host\":\"/x\",\"is_root_device\":true}",
            b"\xff\xfe /\x00\n\xff",
            b"PUT /actions\n{\"action_type\":\"InstanceStart\"}",
        ] {
            super::request(seed);
        }
    }
}
