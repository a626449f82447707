package rpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
)

// envelopeVersion is the only envelope oslo.messaging 14 writes.
const envelopeVersion = "2.0"

// ErrUndecodable marks a message the server drops (basic.reject without
// requeue) because oslo would not decode it either.
var ErrUndecodable = errors.New("undecodable message")

// encodeEnvelope wraps inner (already JSON) into the 2.0 envelope. Both
// layers are ASCII with \u escapes, like Python's json.dumps, so that byte
// comparisons against recorded Python messages hold.
func encodeEnvelope(inner []byte) []byte {
	var b bytes.Buffer
	b.Grow(len(inner)*5/4 + 48)
	b.WriteString(`{"oslo.version": "2.0", "oslo.message": `)
	writeASCIIString(&b, inner)
	b.WriteByte('}')
	return b.Bytes()
}

// writeASCIIString writes s as a JSON string literal escaped the way
// Python's json.dumps does with ensure_ascii=True.
func writeASCIIString(b *bytes.Buffer, s []byte) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"':
				b.WriteString(`\"`)
			case c == '\\':
				b.WriteString(`\\`)
			case c == '\n':
				b.WriteString(`\n`)
			case c == '\r':
				b.WriteString(`\r`)
			case c == '\t':
				b.WriteString(`\t`)
			case c == '\b':
				b.WriteString(`\b`)
			case c == '\f':
				b.WriteString(`\f`)
			case c < 0x20 || c == 0x7f:
				b.WriteString(`\u00`)
				b.WriteByte(hex[c>>4])
				b.WriteByte(hex[c&0xf])
			default:
				b.WriteByte(c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		i += size
		if r > 0xffff {
			r -= 0x10000
			hi, lo := 0xd800+(r>>10), 0xdc00+(r&0x3ff)
			fmt.Fprintf(b, `\u%04x\u%04x`, hi, lo)
			continue
		}
		fmt.Fprintf(b, `\u%04x`, r)
	}
	b.WriteByte('"')
}

// marshalInner encodes an inner message with Python's spacing and ASCII
// escapes. Go's HTML escaping is turned off: Python does not escape <, >, &.
func marshalInner(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	out := bytes.TrimRight(buf.Bytes(), "\n")
	return out, nil
}

// decodeBody returns the inner message of a delivery as raw JSON fields,
// applying oslo's rules: JSON content type (or none), a 2.0-compatible
// envelope, or a bare inner object (the 1.0 format).
func decodeBody(contentType string, body []byte) (map[string]json.RawMessage, error) {
	if contentType != "" && !strings.EqualFold(contentType, "application/json") {
		return nil, fmt.Errorf("%w: content type %q is not application/json", ErrUndecodable, contentType)
	}
	// One pass over the outer object; the inner string is unquoted on the
	// way. Fields of other types make the envelope fall back to the slow
	// path below, which tells what is wrong with it.
	var env struct {
		Version *string `json:"oslo.version"`
		Message *string `json:"oslo.message"`
	}
	if err := json.Unmarshal(body, &env); err == nil && env.Version != nil && env.Message != nil {
		if ok, err := versionCompatible(envelopeVersion, *env.Version); err != nil || !ok {
			return nil, fmt.Errorf("%w: unsupported envelope version %q", ErrUndecodable, *env.Version)
		}
		return decodeInner([]byte(*env.Message))
	}
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(body, &outer); err != nil {
		return nil, fmt.Errorf("%w: body is not a JSON object: %v", ErrUndecodable, err)
	}
	rawVersion, hasVersion := outer["oslo.version"]
	rawMessage, hasMessage := outer["oslo.message"]
	if !hasVersion || !hasMessage {
		if outer == nil {
			return nil, fmt.Errorf("%w: body is null", ErrUndecodable)
		}
		return outer, nil
	}
	var version string
	if err := json.Unmarshal(rawVersion, &version); err != nil {
		return nil, fmt.Errorf("%w: oslo.version is not a string", ErrUndecodable)
	}
	if ok, err := versionCompatible(envelopeVersion, version); err != nil || !ok {
		return nil, fmt.Errorf("%w: unsupported envelope version %q", ErrUndecodable, version)
	}
	var inner string
	if err := json.Unmarshal(rawMessage, &inner); err != nil {
		return nil, fmt.Errorf("%w: oslo.message is not a string", ErrUndecodable)
	}
	return decodeInner([]byte(inner))
}

func decodeInner(inner []byte) (map[string]json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(inner, &fields); err != nil {
		return nil, fmt.Errorf("%w: oslo.message is not a JSON object: %v", ErrUndecodable, err)
	}
	if fields == nil {
		return nil, fmt.Errorf("%w: oslo.message is null", ErrUndecodable)
	}
	return fields, nil
}

// publishing builds the AMQP properties every oslo message carries.
func publishing(body []byte) amqp.Publishing {
	return amqp.Publishing{
		ContentType:     "application/json",
		ContentEncoding: "utf-8",
		DeliveryMode:    amqp.Persistent,
		Priority:        0,
		Headers:         amqp.Table{},
		Body:            body,
	}
}

// appendJSONString appends s as a JSON string literal (ASCII, Python style).
func appendJSONString(b []byte, s string) []byte {
	var buf bytes.Buffer
	writeASCIIString(&buf, []byte(s))
	return append(b, buf.Bytes()...)
}
