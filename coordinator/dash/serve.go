package dash

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
)

// web holds the page, its script and the vendored uPlot (web/uplot, see
// its README for the version and hash). Embedded, so the coordinator is one
// binary and the page loads nothing from the network.
//
//go:embed web/index.html web/dashboard.js web/uplot/uPlot.iife.min.js web/uplot/uPlot.min.css web/uplot/LICENSE
var web embed.FS

// Handler serves the dashboard of b: the page at /, its static files under
// /static/, and the status JSON at /status. The page's URLs are relative,
// so the handler may be mounted under a prefix (with http.StripPrefix).
// The files are embedded at build time, so an error is a bug in the build.
func (b *Board) Handler() (http.Handler, error) {
	static, err := fs.Sub(web, "web")
	if err != nil {
		return nil, fmt.Errorf("dash: embedded web directory: %w", err)
	}
	page, err := fs.ReadFile(static, "index.html")
	if err != nil {
		return nil, fmt.Errorf("dash: embedded page: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(page)
	})
	mux.Handle("/static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		var buf bytes.Buffer
		if err := json.NewEncoder(&buf).Encode(b.Snapshot()); err != nil {
			// Num makes every float encodable; an error here is a bug,
			// and the page shows this text.
			http.Error(w, "dashboard: encode status: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(buf.Bytes())
	})
	return mux, nil
}
