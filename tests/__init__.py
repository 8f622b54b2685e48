"""tokenfill's tests. The process is set up as a `tokenfill` command sets up its own, before
anything loads torch (OpenMP threads sleep while they wait)."""

from tokenfill import process

process.configure()
