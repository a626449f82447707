package rpc

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestDecodeBodyFollowsOslo(t *testing.T) {
	good := `{"oslo.version": "2.0", "oslo.message": "{\"method\": \"echo\", \"args\": {}}"}`
	tests := []struct {
		name, ct, body string
		wantErr        bool
	}{
		{"envelope", "application/json", good, false},
		{"no content type is accepted", "", good, false},
		{"text/plain is rejected", "text/plain", good, true},
		{"not json", "application/json", "this is not json", true},
		{"bare inner dict (1.0 format)", "application/json", `{"method": "echo", "args": {}}`, false},
		{"envelope 2.1", "application/json", `{"oslo.version": "2.1", "oslo.message": "{}"}`, true},
		{"envelope 3.0", "application/json", `{"oslo.version": "3.0", "oslo.message": "{}"}`, true},
		{"message is an object", "application/json", `{"oslo.version": "2.0", "oslo.message": {"method": "x"}}`, true},
		{"message is not json", "application/json", `{"oslo.version": "2.0", "oslo.message": "nope"}`, true},
		{"raw utf-8", "application/json", "{\"oslo.version\": \"2.0\", \"oslo.message\": \"{\\\"method\\\": \\\"h\u00e9\\\"}\"}", false},
		{"array body", "application/json", `[1,2]`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeBody(tc.ct, []byte(tc.body))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err != nil && !errors.Is(err, ErrUndecodable) {
				t.Fatalf("error %v does not wrap ErrUndecodable", err)
			}
		})
	}
}

func TestEnvelopeIsASCIIAndRoundTrips(t *testing.T) {
	inner, err := marshalInner(map[string]any{"x": "h\u00e9llo \u2603 \U0001F600 <&> \"q\"\n"})
	if err != nil {
		t.Fatal(err)
	}
	body := encodeEnvelope(inner)
	for _, c := range body {
		if c >= 0x80 {
			t.Fatalf("envelope has a non-ASCII byte: %s", body)
		}
	}
	fields, err := decodeBody("application/json", body)
	if err != nil {
		t.Fatal(err)
	}
	var x string
	if err := json.Unmarshal(fields["x"], &x); err != nil || x != "h\u00e9llo \u2603 \U0001F600 <&> \"q\"\n" {
		t.Fatalf("round trip gave %q (%v)", x, err)
	}
}

func TestFailureIsAJSONString(t *testing.T) {
	f, err := encodeFailure(&RemoteError{Class: "InstanceNotFound", Module: "nova.exception", Message: "Instance x could not be found.", Kwargs: map[string]any{"instance_id": "x", "code": 404}})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(f)
	re, err := decodeFailure(raw)
	if err != nil {
		t.Fatal(err)
	}
	if re.Class != "InstanceNotFound" || re.Module != "nova.exception" || re.Kwargs["instance_id"] != "x" || len(re.Args) != 1 || len(re.Traceback) == 0 {
		t.Fatalf("round trip gave %+v", re)
	}
	// A failure rebuilt from a remote one goes on under its original name.
	f, _ = encodeFailure(&RemoteError{Class: "Boom_Remote", Module: "peer_Remote", Message: "m"})
	raw, _ = json.Marshal(f)
	re, _ = decodeFailure(raw)
	if re.Class != "Boom" || re.Module != "peer" {
		t.Fatalf("_Remote suffix kept: %+v", re)
	}
}
