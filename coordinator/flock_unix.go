//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package coordinator

import (
	"errors"
	"os"
	"syscall"
)

var errLocked = errors.New("locked by another process")

func flock(f *os.File) error {
	err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return errLocked
	}
	return err
}

func funlock(f *os.File) error { return syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
