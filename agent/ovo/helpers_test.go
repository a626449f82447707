package ovo

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// fixtureDir holds the files written by fixtures/nova/record_objects.py.
const fixtureDir = "../../fixtures/nova"

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixtureDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// loadFixture decodes a fixture with numbers kept exact.
func loadFixture(t testing.TB, name string) map[string]any {
	t.Helper()
	v, err := decodeJSONValue(readFixture(t, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: not a JSON object", name)
	}
	return m
}

func fixtureNames(t testing.TB, pattern string) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(fixtureDir, pattern))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatalf("no fixture matches %s", pattern)
	}
	names := make([]string, len(paths))
	for i, p := range paths {
		names[i] = filepath.Base(p)
	}
	return names
}

// rawJSON re-marshals a decoded fixture value.
func rawJSON(t testing.TB, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// canonical turns any JSON-able value into decoded JSON (json.Number
// numbers) with the order-free lists sorted: "*.changes" of primitives and
// "obj_what_changed" of object_action updates (oslo builds both from sets).
func canonical(t testing.TB, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	d, err := decodeJSONValue(b)
	if err != nil {
		t.Fatal(err)
	}
	return sortSets(d)
}

func sortSets(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if l, ok := x.([]any); ok && (strings.HasSuffix(k, ".changes") || k == ObjWhatChangedKey) {
				sort.Slice(l, func(i, j int) bool { return fmt.Sprint(l[i]) < fmt.Sprint(l[j]) })
			}
			t[k] = sortSets(x)
		}
	case []any:
		for i, x := range t {
			t[i] = sortSets(x)
		}
	}
	return v
}

// sameJSON fails the test when got and want differ as JSON (numbers
// compared textually, change sets order-free) and shows the first
// difference.
func sameJSON(t testing.TB, what string, got, want any) {
	t.Helper()
	g, w := canonical(t, got), canonical(t, want)
	if reflect.DeepEqual(g, w) {
		return
	}
	t.Errorf("%s differs: %s", what, firstDiff("", g, w))
}

func firstDiff(path string, got, want any) string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return fmt.Sprintf("%s: got %T, want object", path, got)
		}
		for k := range w {
			if _, ok := g[k]; !ok {
				return fmt.Sprintf("%s.%s: missing", path, k)
			}
		}
		for k := range g {
			if _, ok := w[k]; !ok {
				return fmt.Sprintf("%s.%s: unexpected (%s)", path, k, short(g[k]))
			}
		}
		for k := range w {
			if !reflect.DeepEqual(g[k], w[k]) {
				return firstDiff(path+"."+k, g[k], w[k])
			}
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return fmt.Sprintf("%s: got %s, want %s", path, short(got), short(want))
		}
		for i := range w {
			if !reflect.DeepEqual(g[i], w[i]) {
				return firstDiff(fmt.Sprintf("%s[%d]", path, i), g[i], w[i])
			}
		}
	}
	return fmt.Sprintf("%s: got %s, want %s", path, short(got), short(want))
}

func short(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 200 {
		b = append(b[:200], "..."...)
	}
	return string(b)
}

func codecFor(t testing.TB, namespace string) Codec {
	t.Helper()
	switch namespace {
	case "nova":
		return NovaCodec()
	case "cinder":
		return CinderCodec()
	}
	t.Fatalf("unknown namespace %q", namespace)
	return Codec{}
}

func registryFor(namespace string) *Registry {
	if namespace == "cinder" {
		return CinderZed()
	}
	return NovaZed()
}

func stringList(t testing.TB, v any) []string {
	t.Helper()
	l, ok := v.([]any)
	if !ok {
		t.Fatalf("not a list: %T", v)
	}
	out := make([]string, len(l))
	for i, x := range l {
		out[i] = x.(string)
	}
	return out
}

func sortedCopy(s []string) []string {
	out := append([]string{}, s...)
	sort.Strings(out)
	return out
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}
