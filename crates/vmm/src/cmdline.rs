//! Kernel command-line hints: words vmr adds to the guest's command line because it knows its
//! machine, so the kernel does not spend boot time finding out (README, "Kernel command line").
//!
//! A hint is added only if the user's command line does not already set its key (`pci=nommconf`
//! keeps vmr's `pci=off` out), and none are added with `--no-cmdline-hints`.

/// `(key, word)`: `word` is added unless a word of the command line is `key` or starts with
/// `key=`.
pub const CMDLINE_HINTS: &[(&str, &str)] = &[
    // vmr has no PCI bus. Without this, the kernel scans PCI configuration space through ports
    // 0xcf8/0xcfc twice before the console is up (early GART/AGP aperture checks, ~33,000 port
    // exits), then probes for PCI access methods: 4.2 s of the 8.1 s to init in the lab.
    ("pci", "pci=off"),
];

/// `cmdline` with the [`CMDLINE_HINTS`] it does not set itself, the user's text kept as it is.
/// Hints go before a `--` (what follows it is for init, not the kernel).
pub fn with_hints(cmdline: &str) -> String {
    let init_start = words(cmdline).find(|&(_, w)| w == "--").map_or(cmdline.len(), |(at, _)| at);
    let (kernel, init) = cmdline.split_at(init_start);
    let kernel_words: Vec<&str> = words(kernel).map(|(_, w)| w).collect();
    let mut out = kernel.trim_end().to_string();
    for (_, word) in CMDLINE_HINTS.iter().filter(|(key, _)| !sets_key(&kernel_words, key)) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if !init.is_empty() {
        out.push(' ');
        out.push_str(init);
    }
    out
}

/// The whitespace-separated words of `text` with their byte offsets.
fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split(|c: char| c.is_ascii_whitespace())
        .scan(0usize, |at, w| {
            let start = *at;
            *at += w.len() + 1;
            Some((start, w))
        })
        .filter(|(_, w)| !w.is_empty())
}

fn sets_key(words: &[&str], key: &str) -> bool {
    words.iter().any(|w| w.split_once('=').map_or(*w, |(k, _)| k) == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_appended() {
        assert_eq!(with_hints("console=ttyS0 quiet"), "console=ttyS0 quiet pci=off");
        assert_eq!(with_hints(""), "pci=off");
        assert_eq!(with_hints("a  b=\"x  y\" "), "a  b=\"x  y\" pci=off", "the user's text is kept");
    }

    #[test]
    fn the_users_setting_wins() {
        assert_eq!(with_hints("pci=nommconf quiet"), "pci=nommconf quiet");
        assert_eq!(with_hints("quiet pci"), "quiet pci");
        assert_eq!(with_hints("quiet pcie_aspm=off"), "quiet pcie_aspm=off pci=off", "another key");
    }

    #[test]
    fn hints_go_before_init_arguments() {
        assert_eq!(with_hints("quiet -- pci=x single"), "quiet pci=off -- pci=x single");
        assert_eq!(with_hints("-- single"), "pci=off -- single");
        assert_eq!(with_hints("quiet pci=off -- x"), "quiet pci=off -- x");
    }
}
