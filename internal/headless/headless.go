// Package headless drives Chromium in headless mode for the dashboard's
// tests and screenshots: it loads a page, lets its scripts run for a
// virtual-time budget (Chromium advances timers without waiting for them,
// and holds virtual time while a fetch is in flight), and returns the DOM
// as the scripts left it, or a screenshot. It also has the few DOM queries
// the tests need.
package headless

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/net/html"
)

// Find returns the Chromium binary: $RINGTUNE_CHROMIUM, else chromium (the
// Debian package scripts/setup.sh installs), chromium-browser or
// google-chrome on PATH.
func Find() (string, error) {
	if p := os.Getenv("RINGTUNE_CHROMIUM"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			return "", fmt.Errorf("RINGTUNE_CHROMIUM=%s: %w", p, err)
		}
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no Chromium on PATH: install Debian's chromium (scripts/setup.sh does: apt-get install chromium), or point RINGTUNE_CHROMIUM at a Chrome or Chromium binary")
}

// Options of a page load.
type Options struct {
	// Budget is the virtual time the page's scripts get (default 3s).
	Budget time.Duration
	// Width and Height are the window size (default 1280×900).
	Width, Height int
	// ProfileDir is Chromium's user data directory; required, so that no
	// run touches the user's profile (a test's t.TempDir()).
	ProfileDir string
}

func (o Options) args(url string, extra ...string) ([]string, error) {
	if o.ProfileDir == "" {
		return nil, errors.New("headless: Options.ProfileDir is required (a fresh directory)")
	}
	if o.Budget <= 0 {
		o.Budget = 3 * time.Second
	}
	if o.Width <= 0 || o.Height <= 0 {
		o.Width, o.Height = 1280, 900
	}
	args := []string{
		"--headless",
		// Root in a container has no usable sandbox; the page is our own.
		"--no-sandbox",
		"--disable-gpu",
		"--no-first-run",
		"--hide-scrollbars",
		"--user-data-dir=" + o.ProfileDir,
		fmt.Sprintf("--window-size=%d,%d", o.Width, o.Height),
		fmt.Sprintf("--virtual-time-budget=%d", o.Budget.Milliseconds()),
	}
	return append(append(args, extra...), url), nil
}

func run(ctx context.Context, bin string, args []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s %s: %w\n%s", bin, strings.Join(args, " "), err, tail(errb.String(), 2000))
	}
	return out.Bytes(), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// DumpDOM loads url in bin (see Find) and returns the DOM after the
// budget, parsed, and its serialized text.
func DumpDOM(ctx context.Context, bin, url string, o Options) (*html.Node, string, error) {
	args, err := o.args(url, "--dump-dom")
	if err != nil {
		return nil, "", err
	}
	out, err := run(ctx, bin, args)
	if err != nil {
		return nil, "", err
	}
	doc, err := html.Parse(bytes.NewReader(out))
	if err != nil {
		return nil, "", fmt.Errorf("parse the DOM Chromium dumped for %s: %w", url, err)
	}
	return doc, string(out), nil
}

// Screenshot loads url in bin and writes a PNG of the window to path.
func Screenshot(ctx context.Context, bin, url, path string, o Options) error {
	args, err := o.args(url, "--screenshot="+path)
	if err != nil {
		return err
	}
	if _, err := run(ctx, bin, args); err != nil {
		return err
	}
	if st, err := os.Stat(path); err != nil || st.Size() == 0 {
		return fmt.Errorf("chromium wrote no screenshot to %s (%v)", path, err)
	}
	return nil
}

// Attr returns n's attribute key, or "" when it has none.
func Attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// HasClass reports whether n's class attribute lists class.
func HasClass(n *html.Node, class string) bool {
	for _, c := range strings.Fields(Attr(n, "class")) {
		if c == class {
			return true
		}
	}
	return false
}

// All returns the elements under n (n included) for which match is true,
// in document order.
func All(n *html.Node, match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && match(n) {
			out = append(out, n)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return out
}

// Tag matches elements named tag.
func Tag(tag string) func(*html.Node) bool {
	return func(n *html.Node) bool { return n.Data == tag }
}

// ByID returns the element with id under n, or nil.
func ByID(n *html.Node, id string) *html.Node {
	if m := All(n, func(n *html.Node) bool { return Attr(n, "id") == id }); len(m) > 0 {
		return m[0]
	}
	return nil
}

// Text returns the text under n, concatenated.
func Text(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return b.String()
}
