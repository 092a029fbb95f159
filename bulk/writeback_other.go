//go:build !linux

package bulk

import "os"

// startWriteback is a no-op where sync_file_range does not exist: the
// caller's fsync writes everything back.
func startWriteback(*os.File, int64, int64) {}

// waitWriteback is a no-op where sync_file_range does not exist.
func waitWriteback(*os.File, int64, int64) {}

// writeVec writes the pieces iov to f in order.
func writeVec(f *os.File, iov [][]byte) (int, error) {
	total := 0
	for _, p := range iov {
		n, err := f.Write(p)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}
