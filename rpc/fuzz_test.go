package rpc

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecodeRequest feeds arbitrary bodies through the server's decode and
// dispatch path: whatever arrives, the agent must answer or drop it, never
// panic. The corpus starts from every recorded fixture.
func FuzzDecodeRequest(f *testing.F) {
	for _, fx := range loadFixtures(f) {
		f.Add(fx.Properties.ContentType, []byte(fx.BodyRaw))
	}
	f.Add("application/json", []byte(`{"oslo.version": "2.0", "oslo.message": "{\"method\": \"echo\"}"}`))
	f.Add("", []byte(`{"method": 1, "args": [], "version": 2}`))
	d := dispatcher{endpoints: []Endpoint{
		{Version: "1.3", Methods: map[string]Handler{"echo": nil}},
		{Namespace: "baseapi", Version: "1.1", Methods: map[string]Handler{"ping": nil}},
	}}
	f.Fuzz(func(t *testing.T, contentType string, body []byte) {
		fields, err := decodeBody(contentType, body)
		if err != nil {
			return
		}
		req := parseRequest(fields, "q")
		h, derr := d.lookup(req)
		if derr == nil && h == nil && req.Method != "echo" && req.Method != "ping" {
			t.Fatalf("dispatched %q to nothing", req.Method)
		}
		if derr != nil {
			f, err := encodeFailure(asRemoteError(derr))
			if err != nil || !json.Valid([]byte(f)) {
				t.Fatalf("failure not encodable: %v", err)
			}
		}
	})
}

// fixture is one message recorded from the real oslo.messaging by
// fixtures/record.py.
type fixture struct {
	File        string
	Scenario    string `json:"scenario"`
	Description string `json:"description"`
	Role        string `json:"role"`
	Exchange    string `json:"exchange"`
	RoutingKey  string `json:"routing_key"`
	BodyRaw     string `json:"body_raw"`
	Properties  struct {
		ContentType     string         `json:"content_type"`
		ContentEncoding string         `json:"content_encoding"`
		DeliveryMode    int            `json:"delivery_mode"`
		Priority        int            `json:"priority"`
		Headers         map[string]any `json:"headers"`
		Expiration      string         `json:"expiration"`
	} `json:"properties"`
	PeerResult json.RawMessage `json:"peer_result"`
}

func loadFixtures(tb testing.TB) []fixture {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join("..", "fixtures", "oslo", "[0-9]*.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var out []fixture
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			tb.Fatal(err)
		}
		var fx fixture
		if err := json.Unmarshal(raw, &fx); err != nil {
			tb.Fatalf("%s: %v", file, err)
		}
		fx.File = filepath.Base(file)
		out = append(out, fx)
	}
	return out
}
