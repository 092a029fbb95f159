// Command stub stands in for the coordinator and node binaries in the tests of
// scripts/launch.sh, so that the launcher's mechanics (ssh, key passing, logs,
// signals, cleanup) are tested without training anything. Installed under the
// names "coordinator" and "node", it takes its role from its own name.
//
// It reports what a launcher test must check and a real binary would not
// print: the mode of the key file and of its directory and a hash of the key
// (never the key itself). Its behaviour comes from a file "behavior" next to
// the executable, because nothing else reaches it unchanged through ssh:
// lines "ROLE.exit_after=DURATION", "ROLE.exit_code=N", "ROLE.ignore_term=1",
// "ROLE.wait_nodes=N".
//
// wait_nodes makes the exit_after clock start only once N node stubs have
// said they are ready (each drops a marker file next to the executable), so
// that a test's ordering does not depend on how fast ssh or Slurm starts
// processes on a loaded machine.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	exe, err := os.Executable()
	if err != nil {
		fail("executable: %v", err)
	}
	role := filepath.Base(os.Args[0])
	behavior := readBehavior(filepath.Join(filepath.Dir(exe), "behavior"), role)

	fmt.Printf("stub %s pid=%d pgid=%d args=%q\n", role, os.Getpid(), syscall.Getpgrp(), os.Args[1:])
	keyFile := flagValue(os.Args[1:], "--key-file", "--cluster.key_file")
	if keyFile == "" {
		fail("no key file argument")
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		fail("key file: %v", err)
	}
	di, err := os.Stat(filepath.Dir(keyFile))
	if err != nil {
		fail("key dir: %v", err)
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		fail("key file: %v", err)
	}
	sum := sha256.Sum256(key)
	fmt.Printf("stub %s key_file=%s key_mode=%04o dir_mode=%04o key_sha256=%s\n",
		role, keyFile, fi.Mode().Perm(), di.Mode().Perm(), hex.EncodeToString(sum[:]))
	// A line on stderr too: the launcher must stream both.
	fmt.Fprintf(os.Stderr, "stub %s ready\n", role)
	dir := filepath.Dir(exe)
	if role == "node" {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("ready.node.%d", os.Getpid())), nil, 0o644); err != nil {
			fail("ready marker: %v", err)
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	var timeout <-chan time.Time
	if d, err := time.ParseDuration(behavior["exit_after"]); err == nil {
		if n, err := strconv.Atoi(behavior["wait_nodes"]); err == nil {
			waitNodes(dir, n, 2*time.Minute)
		}
		timeout = time.After(d)
	}
	for {
		select {
		case s := <-sigs:
			if behavior["ignore_term"] == "1" {
				fmt.Printf("stub %s ignoring %v\n", role, s)
				continue
			}
			fmt.Printf("stub %s got %v, exiting\n", role, s)
			os.Exit(143)
		case <-timeout:
			code, _ := strconv.Atoi(behavior["exit_code"])
			fmt.Printf("stub %s done, exit %d\n", role, code)
			os.Exit(code)
		}
	}
}

// waitNodes waits until n node stubs have left their ready markers in dir,
// or until limit passes (the test then fails on what it sees).
func waitNodes(dir string, n int, limit time.Duration) {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if m, _ := filepath.Glob(filepath.Join(dir, "ready.node.*")); len(m) >= n {
			return
		}
	}
}

func readBehavior(path, role string) map[string]string {
	m := map[string]string{}
	f, err := os.Open(path)
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if r, name, ok2 := strings.Cut(k, "."); ok && ok2 && r == role {
			m[name] = v
		}
	}
	return m
}

func flagValue(args []string, names ...string) string {
	for i, a := range args {
		for _, n := range names {
			if a == n && i+1 < len(args) {
				return args[i+1]
			}
			if v, ok := strings.CutPrefix(a, n+"="); ok {
				return v
			}
		}
	}
	return ""
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "stub: "+format+"\n", a...)
	os.Exit(66)
}
