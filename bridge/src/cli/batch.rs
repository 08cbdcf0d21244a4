//! `keybridge sign --devices FILE`: the ids go to `POST /v1/sign/batch`,
//! the envelopes come back as a stream and go, as they arrive, to
//!
//! - `--out DIR` (anything else): one `ID.cose` per device. They are
//!   written into a staging folder beside DIR (`.DIR.partial-…`), with no
//!   sync per file, then the file system is synced once and the staging
//!   folder becomes DIR (one rename when DIR is new or empty, else one
//!   rename per file into it, then DIR is synced). A crash or an error
//!   before that leaves at most a staging folder, never a DIR that looks
//!   done; success is reported only after the sync.
//! - `--out FILE.jsonl` (or `.ndjson`): the answer as it came (one
//!   `{"device","envelope"}` line per device, then the `"complete"`
//!   line), written to a temporary file beside FILE, synced and renamed
//!   over FILE once the last line is in.
//! - `--out -`: the same lines on standard output as they come; the
//!   summary goes to standard error. A stream that ends without its
//!   `"complete"` line makes the command fail.
//!
//! Every line from the daemon is checked like any input: an id becomes a
//! file name only after [`check_device_id`], an envelope must be base64,
//! a line must be whole and at most [`MAX_LINE`] bytes, the number of
//! lines must be the trailer's size and no line may follow the trailer.

use crate::client::BatchAnswer;
use crate::wire::{BatchLine, BatchTrailer};
use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keybridge_protocol::device_id::check_device_id;
use std::fs::File;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

/// Longest line accepted from the daemon (an envelope is at most a few
/// KiB, its base64 a third more).
pub const MAX_LINE: usize = 64 * 1024;

/// Where the envelopes go.
pub enum Sink {
    /// One file per device.
    Dir(DirSink),
    /// The stream, into one file.
    File(FileSink),
    /// The stream, on standard output.
    Stdout(std::io::StdoutLock<'static>),
}

impl Sink {
    /// The sink `--out` names, made ready before anything is signed: a
    /// folder that cannot be written is found out before the signature,
    /// not after.
    pub fn open(out: &Path) -> anyhow::Result<Sink> {
        if out.as_os_str() == "-" {
            return Ok(Sink::Stdout(std::io::stdout().lock()));
        }
        let is_stream = out
            .extension()
            .is_some_and(|e| e == "jsonl" || e == "ndjson");
        if is_stream {
            if out.is_dir() {
                bail!("{} is a folder: give a file name", out.display());
            }
            return Ok(Sink::File(FileSink::open(out)?));
        }
        Ok(Sink::Dir(DirSink::open(out)?))
    }

    /// Whether the envelope lines are parsed and written one by one
    /// (else the bytes go on as they came).
    fn per_device(&self) -> bool {
        matches!(self, Sink::Dir(_))
    }
}

/// `--out DIR`.
pub struct DirSink {
    target: PathBuf,
    /// Removed unless [`DirSink::finish`] moved it into place.
    staging: Option<tempfile::TempDir>,
    dir: File,
}

impl DirSink {
    fn open(target: &Path) -> anyhow::Result<DirSink> {
        match std::fs::symlink_metadata(target) {
            Ok(m) if !m.is_dir() => bail!("{} exists and is not a folder", target.display()),
            _ => {}
        }
        let (parent, name) = parent_and_name(target)?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-"))
            .tempdir_in(parent)
            .with_context(|| format!("making a staging folder in {}", parent.display()))?;
        let dir =
            File::open(staging.path()).with_context(|| staging.path().display().to_string())?;
        Ok(DirSink {
            target: target.to_owned(),
            staging: Some(staging),
            dir,
        })
    }

    fn envelope(&mut self, id: &str, envelope: &[u8]) -> anyhow::Result<()> {
        let staging = self.staging.as_ref().expect("until finished").path();
        let path = staging.join(format!("{id}.cose"));
        // A new file each: an id the daemon sent twice is an error, not an
        // overwrite.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| path.display().to_string())?;
        f.write_all(envelope)
            .with_context(|| path.display().to_string())
    }

    /// One sync, then the staging folder's files become the target's.
    fn finish(mut self) -> anyhow::Result<()> {
        rustix::fs::syncfs(&self.dir)
            .with_context(|| format!("syncing {}", self.target.display()))?;
        let staging = self.staging.take().expect("once").keep();
        let (parent, _) = parent_and_name(&self.target)?;
        // A new or empty target: the staging folder takes its place whole.
        match std::fs::rename(&staging, &self.target) {
            Ok(()) => {}
            Err(_) if self.target.is_dir() => {
                // A target with files in it: each file moves in.
                for entry in std::fs::read_dir(&staging)? {
                    let entry = entry?;
                    std::fs::rename(entry.path(), self.target.join(entry.file_name()))
                        .with_context(|| format!("moving into {}", self.target.display()))?;
                }
                std::fs::remove_dir(&staging)?;
                File::open(&self.target)?.sync_all()?;
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e).with_context(|| self.target.display().to_string());
            }
        }
        File::open(parent)?.sync_all()?;
        Ok(())
    }
}

/// `--out FILE.jsonl`.
pub struct FileSink {
    target: PathBuf,
    tmp: std::io::BufWriter<tempfile::NamedTempFile>,
}

impl FileSink {
    fn open(target: &Path) -> anyhow::Result<FileSink> {
        let (parent, name) = parent_and_name(target)?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-"))
            .tempfile_in(parent)
            .with_context(|| format!("making a temporary file in {}", parent.display()))?;
        Ok(FileSink {
            target: target.to_owned(),
            tmp: std::io::BufWriter::with_capacity(1 << 20, tmp),
        })
    }

    fn finish(self) -> anyhow::Result<()> {
        let tmp = self.tmp.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.target)
            .with_context(|| self.target.display().to_string())?;
        let (parent, _) = parent_and_name(&self.target)?;
        File::open(parent)?.sync_all()?;
        Ok(())
    }
}

/// The folder a path is in (`.` for a bare name) and its last part.
fn parent_and_name(path: &Path) -> anyhow::Result<(&Path, String)> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file or folder name", path.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((parent, name))
}

/// Reads the daemon's answer into `sink`; the trailer once every line
/// checked out and the sink is safely done. A progress bar shows when
/// `progress` and more than a second has passed since `started`.
pub async fn receive(
    mut answer: BatchAnswer,
    mut sink: Sink,
    expected: usize,
    progress: bool,
    started: std::time::Instant,
) -> anyhow::Result<BatchTrailer> {
    let mut reader = Lines::default();
    let bar = Progress::new(expected, progress, started);
    let per_device = sink.per_device();
    while let Some(chunk) = answer.chunk().await? {
        match &mut sink {
            Sink::File(f) => f.tmp.write_all(&chunk)?,
            Sink::Stdout(out) => out.write_all(&chunk)?,
            Sink::Dir(_) => {}
        }
        let before = reader.envelopes;
        reader.feed(&chunk, |line| {
            if per_device && let Sink::Dir(d) = &mut sink {
                let line: BatchLine<'_> =
                    serde_json::from_slice(line).context("the daemon sent a bad batch line")?;
                check_device_id(&line.device)
                    .with_context(|| format!("the daemon returned device id {:?}", line.device))?;
                let bytes = B64
                    .decode(line.envelope.as_bytes())
                    .context("the daemon sent bad base64")?;
                d.envelope(&line.device, &bytes)?;
            }
            Ok(())
        })?;
        bar.advance(reader.envelopes - before);
    }
    bar.finish();
    let trailer = reader.end()?;
    if trailer.size != expected {
        bail!(
            "the daemon signed a batch of {} devices, not the {expected} sent",
            trailer.size
        );
    }
    match sink {
        Sink::Dir(d) => d.finish()?,
        Sink::File(f) => f.finish()?,
        Sink::Stdout(mut out) => out.flush()?,
    }
    Ok(trailer)
}

/// Splits the answer into lines and checks their order: envelope lines,
/// then the trailer, then nothing.
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
    envelopes: usize,
    trailer: Option<BatchTrailer>,
}

impl Lines {
    fn feed(
        &mut self,
        mut data: &[u8],
        mut envelope: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        while !data.is_empty() {
            let Some(i) = data.iter().position(|&b| b == b'\n') else {
                if self.partial.len() + data.len() > MAX_LINE {
                    bail!("the daemon sent a line longer than {MAX_LINE} bytes");
                }
                self.partial.extend_from_slice(data);
                return Ok(());
            };
            let (head, rest) = (&data[..i], &data[i + 1..]);
            data = rest;
            let whole;
            let line = if self.partial.is_empty() {
                head
            } else {
                if self.partial.len() + head.len() > MAX_LINE {
                    bail!("the daemon sent a line longer than {MAX_LINE} bytes");
                }
                self.partial.extend_from_slice(head);
                whole = std::mem::take(&mut self.partial);
                &whole
            };
            if self.trailer.is_some() {
                bail!("the daemon sent more after the batch's last line");
            }
            if line.starts_with(br#"{"device":"#) {
                envelope(line)?;
                self.envelopes += 1;
            } else if line.starts_with(br#"{"complete":"#) {
                let t: BatchTrailer =
                    serde_json::from_slice(line).context("the daemon sent a bad last line")?;
                if !t.complete {
                    bail!("the daemon's last line does not say the batch is complete");
                }
                self.trailer = Some(t);
            } else {
                bail!("the daemon sent a line that is neither an envelope nor the end");
            }
        }
        Ok(())
    }

    fn end(self) -> anyhow::Result<BatchTrailer> {
        if !self.partial.is_empty() {
            bail!("the batch answer ends in the middle of a line: it was cut short");
        }
        let t = self.trailer.context(
            "the batch answer ended without its last line: it was cut short, nothing was saved",
        )?;
        if t.size != self.envelopes {
            bail!(
                "the daemon sent {} envelopes for a batch of {}",
                self.envelopes,
                t.size
            );
        }
        Ok(t)
    }
}

/// A progress bar on standard error for a batch that takes more than a
/// second, when standard error is a terminal.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: std::time::Instant,
}

impl Progress {
    fn new(len: usize, wanted: bool, started: std::time::Instant) -> Self {
        let bar = (wanted && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(len as u64),
                indicatif::ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{wide_bar} {human_pos}/{human_len} devices, {per_sec}, {eta} left",
                )
                .expect("a valid template"),
            );
            // Nothing shows for the first second: a small batch is done
            // before that.
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            bar
        });
        Progress { bar, started }
    }

    fn advance(&self, n: usize) {
        if let Some(bar) = &self.bar {
            if bar.is_hidden() && self.started.elapsed() >= std::time::Duration::from_secs(1) {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            bar.inc(n as u64);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailer(size: usize) -> String {
        format!(
            r#"{{"complete":true,"size":{size},"root":"00","kid":"11","audit":{{"time":1,"cti":"22"}},"fallback":false}}"#
        )
    }

    #[test]
    fn lines_across_chunks_then_the_trailer_and_nothing_after() {
        let text = format!(
            "{{\"device\":\"a\",\"envelope\":\"AA==\"}}\n{{\"device\":\"b\",\"envelope\":\"AQ==\"}}\n{}\n",
            trailer(2)
        );
        // Every split point.
        for cut in 0..text.len() {
            let mut l = Lines::default();
            let mut seen = vec![];
            for part in [&text.as_bytes()[..cut], &text.as_bytes()[cut..]] {
                l.feed(part, |line| {
                    let b: BatchLine<'_> = serde_json::from_slice(line).unwrap();
                    seen.push(b.device.into_owned());
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(seen, ["a", "b"]);
            assert_eq!(l.end().unwrap().size, 2);
        }
        // Cut short: no trailer, or half a line.
        let mut l = Lines::default();
        l.feed(b"{\"device\":\"a\",\"envelope\":\"AA==\"}\n", |_| Ok(()))
            .unwrap();
        assert!(l.end().unwrap_err().to_string().contains("cut short"));
        let mut l = Lines::default();
        l.feed(b"{\"device\":\"a\",\"env", |_| Ok(())).unwrap();
        assert!(l.end().unwrap_err().to_string().contains("cut short"));
        // A size that does not match, a line after the end, junk.
        let mut l = Lines::default();
        l.feed(format!("{}\n", trailer(1)).as_bytes(), |_| Ok(()))
            .unwrap();
        assert!(l.end().is_err());
        let mut l = Lines::default();
        let after = format!("{}\n{{\"device\":\"x\",\"envelope\":\"\"}}\n", trailer(0));
        assert!(l.feed(after.as_bytes(), |_| Ok(())).is_err());
        let mut l = Lines::default();
        assert!(l.feed(b"{\"what\":1}\n", |_| Ok(())).is_err());
        let mut l = Lines::default();
        assert!(l.feed(&vec![b'x'; MAX_LINE + 1], |_| Ok(())).is_err());
    }

    #[test]
    fn a_folder_is_filled_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("out");
        let mut sink = DirSink::open(&target).unwrap();
        sink.envelope("a", b"1").unwrap();
        // The same id twice is refused, not overwritten.
        assert!(sink.envelope("a", b"2").is_err());
        assert!(!target.exists(), "nothing in place before the end");
        sink.finish().unwrap();
        assert_eq!(std::fs::read(target.join("a.cose")).unwrap(), b"1");
        // Into a folder that has files: they stay, the new ones join.
        let mut sink = DirSink::open(&target).unwrap();
        sink.envelope("b", b"3").unwrap();
        sink.finish().unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a.cose", "b.cose"]);
        // Dropped before the end (an error, a cut stream): no trace.
        let mut sink = DirSink::open(&d.path().join("other")).unwrap();
        sink.envelope("c", b"4").unwrap();
        drop(sink);
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["out"]);
    }
}
