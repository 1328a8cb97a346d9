//! Staging a payload's package (a directory or a tar archive) into the
//! working directory, once per execution.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use runner_core::{ExecutionError, LogStream, RunContext, TestPayload};

use crate::io::io_error;
use crate::state::LocalState;

/// Put the payload's package into the working directory, once.
pub(crate) async fn stage_package(
    ctx: &RunContext,
    state: &LocalState,
    payload: &TestPayload,
) -> Result<(), ExecutionError> {
    let Some(package) = &payload.package else {
        return Ok(());
    };
    let marker = state.meta().join("staged");
    if marker.exists() {
        return Ok(());
    }
    let source = PathBuf::from(package);
    let meta = tokio::fs::metadata(&source).await.map_err(|e| {
        ExecutionError::invalid_spec(ctx, "payload.package", format!("{package}: {e}"))
    })?;
    ctx.logs()
        .send(LogStream::System, &format!("staging package {package}"))
        .await;
    if meta.is_dir() {
        let (from, to) = (source.clone(), state.work());
        tokio::task::spawn_blocking(move || copy_tree(&from, &to))
            .await
            .map_err(|e| ExecutionError::permanent(ctx, format!("staging panicked: {e}")))?
            .map_err(|e| io_error(ctx, &format!("staging {package}"), e))?;
    } else if is_tar(package) {
        let status = tokio::process::Command::new("tar")
            .arg("-xf")
            .arg(&source)
            .arg("-C")
            .arg(state.work())
            .stdin(Stdio::null())
            .status()
            .await
            .map_err(|e| io_error(ctx, "cannot run tar", e))?;
        if !status.success() {
            return Err(ExecutionError::invalid_spec(
                ctx,
                "payload.package",
                format!("{package} does not unpack with tar ({status})"),
            ));
        }
    } else {
        return Err(ExecutionError::invalid_spec(
            ctx,
            "payload.package",
            format!("{package} is neither a directory nor a .tar, .tar.gz or .tgz archive"),
        ));
    }
    tokio::fs::write(&marker, b"")
        .await
        .map_err(|e| io_error(ctx, "cannot mark the package staged", e))
}

fn is_tar(name: &str) -> bool {
    [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry.map_err(std::io::Error::other)?;
        let Ok(relative) = entry.path().strip_prefix(from) else {
            continue;
        };
        let target = to.join(relative);
        let kind = entry.file_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(entry.path())?;
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(link, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
