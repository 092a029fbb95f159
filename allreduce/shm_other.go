//go:build !linux

package allreduce

import "errors"

var errNoShm = errors.New("shared-memory payloads are implemented on Linux only")

func createShm(dir, name string, slots, slotBytes int) (*shmSegment, func(), error) {
	return nil, nil, errNoShm
}

func openShm(dir, name string, slots, slotBytes int) (*shmSegment, error) {
	return nil, errNoShm
}

func (s *shmSegment) close() {}
