//go:build amd64 || arm64 || 386 || arm || riscv64 || loong64 || ppc64le || mips64le || mipsle || wasm

package allreduce

// The wire format is little-endian and payloads are reinterpreted in place
// (no per-element decode on the hot path), so the package only builds for
// little-endian architectures; this file is the guard.
const littleEndian = true
