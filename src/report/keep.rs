//! Pages and plots that changed only by noise keep their earlier text. The tables a page
//! shows are settled to their tolerances before it is drawn (`results::tolerance`), but
//! a page also prints numbers rounded for reading (activations to three decimals, plot
//! coordinates to the pixel), and a value that sits on a rounding boundary flips its
//! last digit under kernel noise. When a rewritten page differs from the one it replaces
//! only there — the same text around every number, each number within one unit of its
//! last printed digit — the earlier page is kept.

use std::path::Path;

/// A page's text cut into the runs between numbers and the numbers themselves.
fn split(text: &str) -> (Vec<&str>, Vec<&str>) {
    let bytes = text.as_bytes();
    let (mut words, mut numbers) = (Vec::new(), Vec::new());
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let begin = if i > start && bytes[i - 1] == b'-' {
                i - 1
            } else {
                i
            };
            let mut end = i;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
            if end + 1 < bytes.len() && bytes[end] == b'.' && bytes[end + 1].is_ascii_digit() {
                end += 1;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
            }
            words.push(&text[start..begin]);
            numbers.push(&text[begin..end]);
            start = end;
            i = end;
        } else {
            i += 1;
        }
    }
    words.push(&text[start..]);
    (words, numbers)
}

/// Whether two printed numbers differ by at most one unit of their last digit. Whole
/// numbers count only where `whole_numbers_may_move` (plot coordinates in pixels);
/// elsewhere they are counts, ids and positions, and must be equal.
fn within_last_digit(a: &str, b: &str, whole_numbers_may_move: bool) -> bool {
    if a == b {
        return true;
    }
    let decimals = |s: &str| s.split_once('.').map(|(_, d)| d.len());
    let places = match (decimals(a), decimals(b)) {
        (Some(x), Some(y)) if x == y => x,
        (None, None) if whole_numbers_may_move => 0,
        _ => return false,
    };
    let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) else {
        return false;
    };
    let unit = 10f64.powi(-(places as i32));
    (x - y).abs() <= unit * 1.000_001
}

/// Whether `new` differs from `old` only by last-digit noise. In an SVG file, and inside
/// the `<svg>` elements an HTML page draws inline, whole numbers are pixel coordinates
/// and may move by one too.
pub fn only_noise(old: &str, new: &str, svg_file: bool) -> bool {
    let ((old_words, old_numbers), (new_words, new_numbers)) = (split(old), split(new));
    if old_words != new_words || old_numbers.len() != new_numbers.len() {
        return false;
    }
    let mut in_svg = svg_file;
    for (word, (a, b)) in old_words.iter().zip(old_numbers.iter().zip(&new_numbers)) {
        if !svg_file {
            match (word.rfind("<svg"), word.rfind("</svg>")) {
                (Some(open), Some(close)) => in_svg = open > close,
                (Some(_), None) => in_svg = true,
                (None, Some(_)) => in_svg = false,
                (None, None) => {}
            }
        }
        if !within_last_digit(a, b, in_svg) {
            return false;
        }
    }
    true
}

/// For each `.html` and `.svg` file under `new_dir` that also exists under `old_dir` and
/// differs from it only by noise, puts the old text back. SVG files (plots) let pixel
/// coordinates move by one; in HTML only decimals may.
pub fn keep_unchanged_pages(old_dir: &Path, new_dir: &Path) -> std::io::Result<()> {
    let mut folders = vec![new_dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let svg = match path.extension().and_then(|e| e.to_str()) {
                Some("svg") => true,
                Some("html") => false,
                _ => continue,
            };
            let relative = path.strip_prefix(new_dir).expect("under new_dir");
            let Ok(old) = std::fs::read_to_string(old_dir.join(relative)) else {
                continue;
            };
            let new = std::fs::read_to_string(&path)?;
            if old != new && only_noise(&old, &new, svg) {
                std::fs::write(&path, old)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_last_digit_is_noise_and_anything_else_is_a_change() {
        let old = "<b>0.274</b> · prompt 0, token 2 · score -0.013";
        assert!(only_noise(
            old,
            "<b>0.275</b> · prompt 0, token 2 · score -0.012",
            false
        ));
        assert!(!only_noise(
            old,
            "<b>0.276</b> · prompt 0, token 2 · score -0.013",
            false
        ));
        assert!(!only_noise(
            old,
            "<b>0.274</b> · prompt 1, token 2 · score -0.013",
            false
        ));
        assert!(!only_noise(
            old,
            "<b>0.274</b> · prompt 0, token 2 · score -0.0130",
            false
        ));
        assert!(!only_noise(
            old,
            "<b>0.274</b> · prompt 0, token 2 · grade -0.013",
            false
        ));
    }

    #[test]
    fn plot_coordinates_may_move_by_a_pixel() {
        let old = r#"<circle cx="120" cy="45" r="2"/>"#;
        assert!(only_noise(old, r#"<circle cx="121" cy="45" r="2"/>"#, true));
        assert!(!only_noise(
            old,
            r#"<circle cx="121" cy="45" r="2"/>"#,
            false
        ));
        assert!(!only_noise(
            old,
            r#"<circle cx="123" cy="45" r="2"/>"#,
            true
        ));
    }
}
