package coordinator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// The live dashboard of a real run: the page, and /status following the
// run's progress.
func TestDashboard(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("dash-%d", os.Getpid()), 1, 1, "")
	f.YAML += "metrics:\n  dashboard: 127.0.0.1:0\n"
	f.Write(t, f.YAML)
	c := runCluster(t, ctx, f, 1, []string{"GONODE_STEP_DELAY=40ms"})
	url := c.Coord.WaitFor(t, `msg=dashboard url=(\S+)`, 20*time.Second)[1]

	get := func(u string) (int, []byte) {
		t.Helper()
		resp, err := http.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	code, page := get(url)
	if code != http.StatusOK || !strings.Contains(string(page), "<title>ringtune</title>") || !strings.Contains(string(page), `fetch("status"`) {
		t.Fatalf("GET %s: %d, not the dashboard page", url, code)
	}
	if code, _ := get(url + "nope"); code != http.StatusNotFound {
		t.Errorf("GET %snope: %d, want 404", url, code)
	}

	type status struct {
		Run         string      `json:"run"`
		Task        string      `json:"task"`
		Applied     int         `json:"applied"`
		Total       int         `json:"total"`
		Loss        float64     `json:"loss"`
		WorldSize   int         `json:"world_size"`
		Nodes       []string    `json:"nodes"`
		LossHistory [][]float64 `json:"loss_history"`
	}
	var s status
	for deadline := time.Now().Add(60 * time.Second); ; {
		code, body := get(url + "status")
		if code != http.StatusOK {
			t.Fatalf("GET status: %d", code)
		}
		if err := json.Unmarshal(body, &s); err != nil {
			t.Fatalf("status is not JSON: %v\n%s", err, body)
		}
		if s.Applied >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed 3 committed steps: %s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if s.Run == "" || s.Task != "classification" || s.Total != 24 || s.WorldSize != 1 || len(s.Nodes) != 1 {
		t.Errorf("status does not describe the run: %+v", s)
	}
	if s.Loss <= 0 || len(s.LossHistory) < 3 || s.LossHistory[len(s.LossHistory)-1][0] != float64(s.Applied) {
		t.Errorf("status lacks the loss and its history: loss %v, history %v", s.Loss, s.LossHistory)
	}
	if code := c.Coord.Wait(t, 90*time.Second); code != 0 {
		t.Fatalf("coordinator exit %d", code)
	}
}
