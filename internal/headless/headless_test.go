package headless

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFindNamesABadOverride(t *testing.T) {
	t.Setenv("RINGTUNE_CHROMIUM", "/nonexistent/chrome")
	_, err := Find()
	if err == nil || !strings.Contains(err.Error(), "RINGTUNE_CHROMIUM=/nonexistent/chrome") {
		t.Fatalf("err = %v, want one naming the variable and its value", err)
	}
}

func TestProfileDirRequired(t *testing.T) {
	if _, _, err := DumpDOM(context.Background(), "chromium", "about:blank", Options{}); err == nil || !strings.Contains(err.Error(), "ProfileDir") {
		t.Fatalf("err = %v, want one naming ProfileDir", err)
	}
}

// A real page through real Chromium: the DOM is the one the page's script
// left after its timers ran in virtual time, and a screenshot is written.
func TestDumpDOMAndScreenshot(t *testing.T) {
	bin, err := Find()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	page := filepath.Join(dir, "p.html")
	if err := os.WriteFile(page, []byte(`<html><body><p id="n">0</p><script>
let n = 0; setInterval(() => { document.getElementById("n").textContent = String(++n); }, 1000);
</script></body></html>`), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	doc, _, err := DumpDOM(ctx, bin, "file://"+page, Options{ProfileDir: filepath.Join(dir, "profile"), Budget: 3500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// 3.5 s of virtual time: the 1 s timer fired three times.
	if got := Text(ByID(doc, "n")); got != "3" {
		t.Errorf("counter %q after 3.5 virtual seconds, want 3", got)
	}
	shot := filepath.Join(dir, "shot.png")
	if err := Screenshot(ctx, bin, "file://"+page, shot, Options{ProfileDir: filepath.Join(dir, "profile2"), Width: 400, Height: 300}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(shot)
	if err != nil || !strings.HasPrefix(string(b), "\x89PNG") {
		t.Errorf("screenshot is not a PNG (%v)", err)
	}
}
