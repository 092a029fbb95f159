package launchtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

var flagRE = regexp.MustCompile(`(?:^|[\s"(])(--[a-z][a-z0-9._-]*)`)

// usedFlags returns the flags launch.sh (from its --dry-run), the sbatch
// script and the Kubernetes manifests pass to each binary.
func usedFlags(t *testing.T) map[string]map[string]string {
	t.Helper()
	used := map[string]map[string]string{"coordinator": {}, "node": {}}
	add := func(bin, where, text string) {
		for _, m := range flagRE.FindAllStringSubmatch(text, -1) {
			used[bin][m[1]] = where
		}
	}
	e := newEnv(t, "")
	code, out := runLaunch(t, 10*time.Second, "--hosts", "h1:2", "--config", e.config, "--dry-run", "--state-file", e.state)
	if code != 0 {
		t.Fatalf("launch.sh --dry-run: %d\n%s", code, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if _, rest, ok := strings.Cut(line, "node join "); ok {
			add("node", "scripts/launch.sh", rest)
		} else if _, rest, ok := strings.Cut(line, "coordinator --"); ok {
			add("coordinator", "scripts/launch.sh", "--"+rest)
		}
	}
	raw, err := os.ReadFile(filepath.Join(repoRoot(), "scripts", "slurm", "ringtune.sbatch"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		switch {
		case strings.Contains(line, `coordinator" --`):
			add("coordinator", "ringtune.sbatch", line[strings.Index(line, `coordinator" --`):])
		case strings.Contains(line, "args=(join") || strings.Contains(line, "args+=("):
			add("node", "ringtune.sbatch", line)
		}
	}
	files, _ := filepath.Glob(filepath.Join(repoRoot(), "deploy", "k8s", "*.yaml"))
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			var o struct {
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Command, Args []string
							}
						}
					}
				}
			}
			if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			for _, c := range o.Spec.Template.Spec.Containers {
				if len(c.Command) > 0 {
					add(c.Command[0], filepath.Base(f), strings.Join(c.Args, " "))
				}
			}
		}
	}
	for bin, fl := range used {
		if len(fl) < 3 {
			t.Fatalf("found only %v for %s: the flag extraction is broken", fl, bin)
		}
	}
	return used
}

// Every flag the launchers and manifests pass exists in the real binaries.
// Until cmd/coordinator and cmd/node are in the tree the test skips, saying
// so. cmd/node links libtorch: it is built with scripts/env.sh's flags.
func TestFlagsExistInBinaries(t *testing.T) {
	used := usedFlags(t)
	root := repoRoot()
	for _, bin := range []string{"coordinator", "node"} {
		if _, err := os.Stat(filepath.Join(root, "cmd", bin)); err != nil {
			t.Skipf("cmd/%s is not in this checkout yet; flags used: %v", bin, used[bin])
		}
	}
	dir := realBinaries(t)
	help := map[string][]string{"coordinator": {"--help"}, "node": {"join", "--help"}}
	for bin, fl := range used {
		out, err := exec.Command(filepath.Join(dir, bin), help[bin]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", bin, help[bin], err, out)
		}
		for f, where := range fl {
			if !regexp.MustCompile(`(?m)^\s+(-\w, )?` + regexp.QuoteMeta(f) + `\b`).Match(out) {
				t.Errorf("%s passes %s to %s, which does not have it:\n%s", where, f, bin, out)
			}
		}
	}
}
