//go:build !linux

package bulk

import "os"

// startWriteback is a no-op where sync_file_range does not exist: the
// caller's fsync writes everything back.
func startWriteback(*os.File, int64, int64) {}

// waitWriteback is a no-op where sync_file_range does not exist.
func waitWriteback(*os.File, int64, int64) {}
