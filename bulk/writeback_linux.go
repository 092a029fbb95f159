package bulk

import (
	"errors"
	"io"
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

// writeVec writes the pieces iov to f in order with writev(2), up to
// 1,024 pieces (IOV_MAX) a call, and returns the bytes written; an error
// names the file, as os.File's do. A short write goes on from where it
// stopped (the next call reports the error, a full disk say).
func writeVec(f *os.File, iov [][]byte) (int, error) {
	fd := int(f.Fd())
	total := 0
	for len(iov) > 0 {
		n, err := unix.Writev(fd, iov[:min(len(iov), 1024)])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return total, &os.PathError{Op: "write", Path: f.Name(), Err: err}
		}
		if n <= 0 {
			return total, &os.PathError{Op: "write", Path: f.Name(), Err: io.ErrShortWrite}
		}
		total += n
		for n > 0 {
			if n >= len(iov[0]) {
				n -= len(iov[0])
				iov = iov[1:]
			} else {
				iov[0] = iov[0][n:]
				n = 0
			}
		}
	}
	return total, nil
}
