package coordinator

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// dirLock holds an exclusive advisory lock (flock) on a lock file for the
// life of a run, so that two coordinators cannot share a checkpoint or
// output directory and overwrite each other's files. The kernel drops the
// lock when the process dies, however it dies, so a crash leaves no stale
// lock; the file itself stays, holding the last holder's pid and host for
// the error message of whoever finds it locked.
type dirLock struct{ f *os.File }

// lockName is the lock file of checkpoint.dir, inside it.
const lockName = ".ringtune.lock"

// outputLockPath is output.dir's lock file. It lives beside output.dir, in
// its parent, because the export replaces output.dir by a rename: a lock
// file inside would be renamed away with the old directory.
func outputLockPath(dir string) string {
	return filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+lockName)
}

// lockDir takes the lock file path for the directory dir of config key key,
// creating the file's directory. It fails with an error naming the key, the
// directory and the holder when another process holds it.
func lockDir(key, dir, path string) (*dirLock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: lock %s: %w", key, dir, err)
	}
	if err := flock(f); err != nil {
		holder, _ := os.ReadFile(path)
		_ = f.Close()
		if errors.Is(err, errLocked) {
			h := strings.TrimSpace(string(holder))
			if h == "" {
				h = "holder unknown"
			}
			return nil, fmt.Errorf("%s: %s is in use by another coordinator (%s; lock file %s): stop that run first, or give this one another %s",
				key, dir, h, path, key)
		}
		return nil, fmt.Errorf("%s: lock %s: %w", key, dir, err)
	}
	host, _ := os.Hostname()
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(fmt.Sprintf("pid %d on host %s since %s\n", os.Getpid(), host, time.Now().UTC().Format(time.RFC3339))), 0)
		if err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("%s: write lock file %s: %w", key, path, err)
		}
	}
	return &dirLock{f: f}, nil
}

// release drops the lock. The file stays (removing it would race with a
// process that has just opened it).
func (l *dirLock) release() {
	if l != nil && l.f != nil {
		_ = funlock(l.f)
		_ = l.f.Close()
		l.f = nil
	}
}

// checkWritable makes sure a file can be created in dir now, rather than
// after hours of training: it creates dir and removes a probe file.
func checkWritable(key, dir string) error {
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		return fmt.Errorf("%s: %s exists and is not a directory", key, dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("%s: cannot create %s: %w", key, dir, err)
	}
	f, err := os.CreateTemp(dir, ".ringtune-probe-*")
	if err != nil {
		return fmt.Errorf("%s: cannot write in %s: %w", key, dir, err)
	}
	name := f.Name()
	_ = f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("%s: cannot remove a file in %s: %w", key, dir, err)
	}
	return nil
}

// lockDirs checks that checkpoint.dir and output.dir's parent are writable
// and locks both for this run.
func (c *Coordinator) lockDirs() error {
	var errs []error
	if d := c.cfg.Checkpoint.Dir; d != "" {
		if err := checkWritable("checkpoint.dir", d); err != nil {
			errs = append(errs, err)
		} else if l, err := lockDir("checkpoint.dir", d, filepath.Join(d, lockName)); err != nil {
			errs = append(errs, err)
		} else {
			c.locks = append(c.locks, l)
		}
	}
	out := c.cfg.Output.Dir
	if st, err := os.Stat(out); err == nil && !st.IsDir() {
		errs = append(errs, fmt.Errorf("output.dir: %s exists and is not a directory", out))
	} else if err := checkWritable("output.dir", filepath.Dir(out)); err != nil {
		errs = append(errs, err)
	} else if l, err := lockDir("output.dir", out, outputLockPath(out)); err != nil {
		errs = append(errs, err)
	} else {
		c.locks = append(c.locks, l)
	}
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return err
	}
	return nil
}

// Close releases the run's directory locks. Run calls it when it returns;
// call it after a New whose Run is never called.
func (c *Coordinator) Close() {
	for _, l := range c.locks {
		l.release()
	}
	c.locks = nil
}
