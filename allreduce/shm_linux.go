package allreduce

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// createShm creates, fully allocates and maps a new segment file dir/name
// readable by this uid only. unlink removes the name (the mapping stays).
// Both sides map with MAP_POPULATE, so the first operation takes no page
// faults in the slots.
func createShm(dir, name string, slots, slotBytes int) (*shmSegment, func(), error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("creating shared memory: %w", err)
	}
	defer f.Close() // the mapping outlives the descriptor
	unlink := func() { os.Remove(path) }
	size := shmSize(slots, slotBytes)
	// Allocate every page now: touching a page of a sparse file on a full
	// tmpfs raises SIGBUS, while fallocate reports ENOSPC here.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(size)); err != nil {
		unlink()
		return nil, nil, fmt.Errorf("allocating %d bytes of shared memory in %s: %w", size, dir, err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		unlink()
		return nil, nil, fmt.Errorf("mapping %s: %w", path, err)
	}
	return &shmSegment{mem: mem, slots: slots, slotBytes: slotBytes}, unlink, nil
}

// openShm maps the existing segment dir/name, which must have exactly the
// offered size.
func openShm(dir, name string, slots, slotBytes int) (*shmSegment, error) {
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the offered shared memory: %w", err)
	}
	defer f.Close()
	size := shmSize(slots, slotBytes)
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Size() != int64(size) {
		return nil, fmt.Errorf("%s has %d bytes, the offer says %d", path, st.Size(), size)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", path, err)
	}
	return &shmSegment{mem: mem, slots: slots, slotBytes: slotBytes}, nil
}

// close unmaps the segment; nothing may touch its slots afterwards.
func (s *shmSegment) close() {
	if s.mem != nil {
		unix.Munmap(s.mem)
		s.mem = nil
	}
}
