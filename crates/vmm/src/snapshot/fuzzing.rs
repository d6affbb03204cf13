//! Entry point of the snapshot fuzz target (`crates/vmm/fuzz`): bytes as a state file.

/// Decodes `data` as is and with its body sealed by a valid checksum (so that mutations reach
/// the section parser and the checks behind it). Either decode fails with a one-line error, or
/// the state encodes and decodes to itself.
pub fn state(data: &[u8]) {
    check(data);
    if data.len() >= 40 {
        let mut sealed = data.to_vec();
        let crc = crc32fast::hash(&sealed[40..]);
        sealed[20..24].copy_from_slice(&crc.to_le_bytes());
        let len = (sealed.len() - 40) as u64;
        sealed[24..32].copy_from_slice(&len.to_le_bytes());
        check(&sealed);
    }
}

fn check(data: &[u8]) {
    match super::decode(data) {
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
        Ok(state) => {
            let again = super::encode(&state).expect("a decoded state encodes");
            assert_eq!(super::decode(&again).expect("and decodes again"), state);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_run() {
        let good = super::super::encode(&super::super::tests::sample()).unwrap();
        super::state(&good);
        for cut in [0, 7, 40, 41, 100, good.len() - 1] {
            super::state(&good[..cut]);
        }
        let mut flipped = good.clone();
        for i in (40..flipped.len()).step_by(13) {
            flipped[i] = flipped[i].wrapping_add(1);
            super::state(&flipped);
        }
    }
}
