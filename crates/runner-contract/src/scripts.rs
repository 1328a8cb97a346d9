//! Shell scripts for the kit's cases, for backends that run `sh -c`
//! (local, ec2 through the SSM emulator): one place, so every backend's
//! fixture places the secret and sizes the output the same way.

/// Print 65,530 bytes of 10-byte lines, then the value of `$var` (so it
/// straddles the 64 KiB read boundary), and write the same bytes to
/// `artifact`.
pub fn secret_across_chunks(var: &str, artifact: &str) -> String {
    format!(
        "body() {{ yes aaaaaaaaa | head -c 65530; printf '%s tail\\n' \"${var}\"; }}; body; body > {artifact}"
    )
}

/// Print `line_mib` MiB without a newline (then one), and write a file of
/// `artifact_mib` MiB named `artifact`.
pub fn big_output(line_mib: u64, artifact_mib: u64, artifact: &str) -> String {
    format!(
        "head -c {} /dev/zero | tr '\\0' x; echo; head -c {} /dev/zero > {artifact}",
        line_mib * 1024 * 1024,
        artifact_mib * 1024 * 1024
    )
}
