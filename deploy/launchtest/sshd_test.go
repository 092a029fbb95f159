package launchtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// repoRoot is the repository's top directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// sshServer is a real OpenSSH sshd run by the tests: a throwaway host key and
// user key in a private directory, listening on 127.0.0.1 and 127.0.0.2 at a
// free port. Its ssh_config names three hosts: node-a (127.0.0.1), node-b
// (127.0.0.2) and dead (127.0.0.3, where nothing listens).
type sshServer struct {
	dir       string
	port      int
	sshConfig string // ssh -F file
	cmd       *exec.Cmd
	done      chan error // receives cmd.Wait's result
	log       *syncBuffer
}

var (
	sshdOnce sync.Once
	sshd     *sshServer
	sshdErr  error
	sshdSkip string
)

// needSSHD returns the shared sshd, starting it on first use; the test skips
// when sshd is not installed and cannot be installed.
func needSSHD(t *testing.T) *sshServer {
	t.Helper()
	sshdOnce.Do(func() { sshd, sshdSkip, sshdErr = startSSHD() })
	if sshdSkip != "" {
		t.Skip(sshdSkip)
	}
	if sshdErr != nil {
		t.Fatal(sshdErr)
	}
	return sshd
}

func stopSSHD() {
	if sshd != nil {
		sshd.cmd.Process.Kill()
		<-sshd.done
		os.RemoveAll(sshd.dir)
	}
}

// findSSHD finds sshd, installing Debian's openssh-server when it is missing
// and the test runs as root (scripts/setup.sh should install it too; this
// keeps a bare CI image working). Services are not started by the install:
// a policy-rc.d refusing them is put in place for its duration if none is
// there, so no system sshd is left running.
func findSSHD() (path, skip string, err error) {
	for _, p := range []string{"sshd", "/usr/sbin/sshd"} {
		if p, err := exec.LookPath(p); err == nil {
			return p, "", nil
		}
	}
	if os.Geteuid() != 0 {
		return "", "sshd not found and not root: install the Debian package openssh-server (apt-get install openssh-server) to run the ssh launch tests", nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", "sshd not found and no apt-get to install it: install OpenSSH's server (Debian package openssh-server) to run the ssh launch tests", nil
	}
	const policy = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(policy); os.IsNotExist(err) {
		if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
			return "", "", fmt.Errorf("write %s: %w", policy, err)
		}
		defer os.Remove(policy)
	}
	install := func() ([]byte, error) {
		cmd := exec.Command("apt-get", "install", "-y", "-q", "--no-install-recommends", "openssh-server")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		return cmd.CombinedOutput()
	}
	if out, err := install(); err != nil {
		if out2, err2 := exec.Command("apt-get", "update", "-q").CombinedOutput(); err2 != nil {
			return "", "", fmt.Errorf("sshd missing; apt-get update failed: %v\n%s", err2, out2)
		}
		if out, err = install(); err != nil {
			return "", "", fmt.Errorf("sshd missing; apt-get install openssh-server failed: %v\n%s", err, out)
		}
		_ = out
	}
	p, err := exec.LookPath("/usr/sbin/sshd")
	if err != nil {
		return "", "", fmt.Errorf("installed openssh-server but /usr/sbin/sshd is missing: %v", err)
	}
	return p, "", nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startSSHD() (*sshServer, string, error) {
	bin, skip, err := findSSHD()
	if skip != "" || err != nil {
		return nil, skip, err
	}
	u, err := user.Current()
	if err != nil {
		return nil, "", err
	}
	if os.Geteuid() == 0 {
		// sshd refuses to start without its privilege separation directory,
		// which only the service unit creates.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, "", err
		}
	}
	dir, err := os.MkdirTemp("", "launchtest-sshd-")
	if err != nil {
		return nil, "", err
	}
	s := &sshServer{dir: dir, log: &syncBuffer{}, done: make(chan error, 1)}
	for _, k := range []string{"hostkey", "id"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "launchtest", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			return nil, "", fmt.Errorf("ssh-keygen: %v\n%s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "id.pub"))
	if err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return nil, "", err
	}
	hostPub, err := os.ReadFile(filepath.Join(dir, "hostkey.pub"))
	if err != nil {
		return nil, "", err
	}
	if s.port, err = freePort(); err != nil {
		return nil, "", err
	}
	// Strict host key checking stays on: known_hosts holds the throwaway host
	// key for both addresses, as an admin would have it.
	fields := strings.Fields(string(hostPub))
	known := fmt.Sprintf("[127.0.0.1]:%d,[127.0.0.2]:%d %s %s\n", s.port, s.port, fields[0], fields[1])
	if err := os.WriteFile(filepath.Join(dir, "known_hosts"), []byte(known), 0o600); err != nil {
		return nil, "", err
	}
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
ListenAddress 127.0.0.2
HostKey %[2]s/hostkey
AuthorizedKeysFile %[2]s/authorized_keys
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers %[3]s
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
`, s.port, dir, u.Username)
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600); err != nil {
		return nil, "", err
	}
	client := fmt.Sprintf(`Host node-a
  HostName 127.0.0.1
Host node-b
  HostName 127.0.0.2
Host dead
  HostName 127.0.0.3
Host *
  Port %d
  User %s
  IdentityFile %[3]s/id
  IdentitiesOnly yes
  UserKnownHostsFile %[3]s/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  LogLevel ERROR
`, s.port, u.Username, dir)
	s.sshConfig = filepath.Join(dir, "ssh_config")
	if err := os.WriteFile(s.sshConfig, []byte(client), 0o600); err != nil {
		return nil, "", err
	}
	s.cmd = exec.Command(bin, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start %s: %w", bin, err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.2:%d", s.port), time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-s.done:
			return nil, "", fmt.Errorf("sshd exited: %v\n%s", err, s.log)
		default:
		}
		if time.Now().After(deadline) {
			s.cmd.Process.Kill()
			<-s.done
			return nil, "", fmt.Errorf("sshd not listening on port %d after 10s:\n%s", s.port, s.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s, "", nil
}
