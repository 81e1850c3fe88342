//! Money never touches binary floating point: no float type token anywhere in the crate.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Whether `text` contains `token` as a whole word (so `visit_u64` does not count).
fn has_token(text: &str, token: &str) -> bool {
    text.match_indices(token).any(|(start, _)| {
        let word = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
        let before = text[..start]
            .bytes()
            .next_back()
            .is_none_or(|byte| !word(byte));
        let after = text[start + token.len()..]
            .bytes()
            .next()
            .is_none_or(|byte| !word(byte));
        before && after
    })
}

#[test]
fn no_float_anywhere_in_the_crate() {
    // Built at run time so this file does not contain the tokens it looks for.
    let tokens = [format!("f{}", 32), format!("f{}", 64)];
    let root = crate::crate_dir();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    assert!(files.len() >= 8, "found the sources: {files:?}");
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for token in &tokens {
            if has_token(&text, token) {
                offenders.push(format!("{} uses {token}", file.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn the_scanner_sees_a_float() {
    let token = format!("f{}", 64);
    assert!(has_token(&format!("let x: {token} = 1.0;"), &token));
    assert!(has_token(&format!("as {token}"), &token));
    assert!(!has_token(&format!("visit_{token}"), &token));
    assert!(!has_token(&format!("{token}_bits"), &token));
}
