package safetensors

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func sampleTensors() []Tensor {
	var ts []Tensor
	for i, name := range []string{"embed.weight", "layer.0.w", "layer.1.w", "head.bias"} {
		v := make([]float32, 4*(i+1))
		for j := range v {
			v[j] = float32(i*100 + j)
		}
		ts = append(ts, FromFloat32(name, []int64{int64(len(v))}, v))
	}
	return ts
}

func checkSame(t *testing.T, c *Checkpoint, want []Tensor) {
	t.Helper()
	var names []string
	for _, w := range want {
		names = append(names, w.Name)
		got, err := c.Tensor(w.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Data, w.Data) || !slices.Equal(got.Shape, w.Shape) {
			t.Errorf("%s differs after the round trip", w.Name)
		}
	}
	slices.Sort(names)
	if !slices.Equal(c.Names(), names) {
		t.Errorf("Names = %v, want %v", c.Names(), names)
	}
}

func TestWriteDirSharded(t *testing.T) {
	dir := t.TempDir()
	ts := sampleTensors() // 16, 32, 48, 64 bytes
	paths, err := WriteDir(dir, ts, map[string]string{"format": "pt"}, 50)
	if err != nil {
		t.Fatal(err)
	}
	// 16+32 fit in 50; 48 and 64 each need their own shard.
	want := []string{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", IndexFileName}
	var got []string
	for _, p := range paths {
		got = append(got, filepath.Base(p))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("wrote %v, want %v", got, want)
	}
	raw, err := os.ReadFile(filepath.Join(dir, IndexFileName))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Metadata  map[string]int64  `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatal(err)
	}
	if idx.Metadata["total_size"] != 160 || idx.WeightMap["layer.1.w"] != want[1] || idx.WeightMap["head.bias"] != want[2] || idx.WeightMap["embed.weight"] != want[0] {
		t.Errorf("index = %s", raw)
	}
	for _, p := range []string{dir, filepath.Join(dir, IndexFileName)} {
		c, err := Load(p)
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, c, ts)
		if len(c.Files()) != 3 || c.Metadata()["format"] != "pt" {
			t.Errorf("Files = %v, Metadata = %v", c.Files(), c.Metadata())
		}
		c.Close()
	}

	// Saving again unsharded must not leave shards or the index behind:
	// transformers would otherwise see two checkpoints.
	if _, err := WriteDir(dir, ts[:1], nil, 0); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != SingleFileName {
		t.Errorf("directory after unsharded save: %v", ents)
	}
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkSame(t, c, ts[:1])
}

func TestOpenIndexMismatch(t *testing.T) {
	setup := func(t *testing.T, weightMap map[string]string) string {
		dir := t.TempDir()
		ts := sampleTensors()
		if err := Write(filepath.Join(dir, "a.safetensors"), ts[:2], nil); err != nil {
			t.Fatal(err)
		}
		if err := Write(filepath.Join(dir, "b.safetensors"), ts[2:], nil); err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(map[string]any{"metadata": map[string]any{}, "weight_map": weightMap})
		p := filepath.Join(dir, IndexFileName)
		if err := os.WriteFile(p, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := map[string]string{"embed.weight": "a.safetensors", "layer.0.w": "a.safetensors", "layer.1.w": "b.safetensors", "head.bias": "b.safetensors"}
	c, err := OpenIndex(setup(t, good))
	if err != nil {
		t.Fatalf("consistent index: %v", err)
	}
	checkSame(t, c, sampleTensors())
	c.Close()

	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range good {
			m[a] = b
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name string
		wm   map[string]string
		want []string
	}{
		{"index names a tensor the shard lacks", with("ghost", "a.safetensors"), []string{`"ghost"`, "a.safetensors", "no such tensor"}},
		{"shard holds a tensor the index omits", with("head.bias", ""), []string{`"head.bias"`, "b.safetensors", "does not list it"}},
		{"index places a tensor in the wrong shard", with("head.bias", "a.safetensors"), []string{`"head.bias"`, "a.safetensors"}},
		{"missing shard", with("head.bias", "c.safetensors"), []string{"c.safetensors"}},
		{"shard outside the directory", with("head.bias", "../b.safetensors"), []string{`"../b.safetensors"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := setup(t, tc.wm)
			_, err := OpenIndex(p)
			if err == nil {
				t.Fatal("OpenIndex accepted an inconsistent checkpoint")
			}
			for _, s := range append(tc.want, p) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}
}

func TestLoadEmptyDir(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(dir)
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), SingleFileName) {
		t.Errorf("err = %v, want one naming the directory and the expected files", err)
	}
}
