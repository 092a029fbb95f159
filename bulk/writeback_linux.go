package bulk

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to start writing [off, off+n) of f back
// to the disk, without waiting for it. It is only a hint: an error (a file
// system without the call) changes nothing, since the caller's fsync
// still writes everything.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// waitWriteback writes [off, off+n) of f back to the disk and waits for
// it. The sink calls it for the range written two intervals before, so
// that at most ~2 intervals of the file are dirty at any time: the final
// fsync has little left, and the process does not pile up a state's worth
// of dirty page cache (which the kernel then throttles). Errors are left
// to the caller's fsync, as for startWriteback.
func waitWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
}
