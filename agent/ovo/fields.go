package ovo

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ErrNotSet is returned by the typed getters for a field that is not set
// (oslo would lazy-load it; a compute agent asks conductor or fails).
var ErrNotSet = errors.New("ovo: field not set")

// ErrNull is returned by the typed getters for a field set to None; the
// zero value is returned with it.
var ErrNull = errors.New("ovo: field is None")

// FieldTypeError is returned by the typed getters when a field's primitive
// does not have the wire form of the requested type.
type FieldTypeError struct {
	Object, Field, Want string
	Value               any
}

// Error implements error.
func (e *FieldTypeError) Error() string {
	return fmt.Sprintf("ovo: %s.%s: want %s, have %T %v", e.Object, e.Field, e.Want, e.Value, e.Value)
}

func (o *Object) lookup(name string) (any, error) {
	v, ok := o.Fields[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s.%s", ErrNotSet, o.Name, name)
	}
	if v == nil {
		return nil, fmt.Errorf("%w: %s.%s", ErrNull, o.Name, name)
	}
	return v, nil
}

func (o *Object) typeErr(name, want string, v any) error {
	return &FieldTypeError{Object: o.Name, Field: name, Want: want, Value: v}
}

// String returns a String, UUID, Enum or address field.
func (o *Object) String(name string) (string, error) {
	v, err := o.lookup(name)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return "", o.typeErr(name, "string", v)
	}
	return s, nil
}

// StringOrEmpty returns a String field, or "" when it is unset, None or
// not a string.
func (o *Object) StringOrEmpty(name string) string {
	s, _ := o.String(name)
	return s
}

// Int returns an Integer field. Like oslo's from_primitive it accepts any
// JSON number with an integral value.
func (o *Object) Int(name string) (int64, error) {
	v, err := o.lookup(name)
	if err != nil {
		return 0, err
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, o.typeErr(name, "integer", v)
	}
	if i, err := n.Int64(); err == nil {
		return i, nil
	}
	f, err := n.Float64()
	if err != nil || f != math.Trunc(f) || math.Abs(f) > 1<<63-1 {
		return 0, o.typeErr(name, "integer", v)
	}
	return int64(f), nil
}

// Float returns a Float field (an integer on the wire is accepted).
func (o *Object) Float(name string) (float64, error) {
	v, err := o.lookup(name)
	if err != nil {
		return 0, err
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, o.typeErr(name, "number", v)
	}
	f, err := n.Float64()
	if err != nil {
		return 0, o.typeErr(name, "number", v)
	}
	return f, nil
}

// Bool returns a Boolean field.
func (o *Object) Bool(name string) (bool, error) {
	v, err := o.lookup(name)
	if err != nil {
		return false, err
	}
	b, ok := v.(bool)
	if !ok {
		return false, o.typeErr(name, "boolean", v)
	}
	return b, nil
}

// DateTime returns a DateTime field parsed as oslo does ([ParseDateTime]).
func (o *Object) DateTime(name string) (time.Time, error) {
	s, err := o.String(name)
	if err != nil {
		return time.Time{}, err
	}
	t, err := ParseDateTime(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("ovo: %s.%s: %w", o.Name, name, err)
	}
	return t, nil
}

// IPAddress returns an IPAddress field.
func (o *Object) IPAddress(name string) (netip.Addr, error) {
	s, err := o.String(name)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ovo: %s.%s: %w", o.Name, name, err)
	}
	return a, nil
}

// Object returns a nested object field.
func (o *Object) Object(name string) (*Object, error) {
	v, err := o.lookup(name)
	if err != nil {
		return nil, err
	}
	c, ok := v.(*Object)
	if !ok {
		return nil, o.typeErr(name, "object", v)
	}
	return c, nil
}

// Objects returns a list-of-objects field; for an ObjectList use the
// "objects" field (see [Object.Items]).
func (o *Object) Objects(name string) ([]*Object, error) {
	v, err := o.lookup(name)
	if err != nil {
		return nil, err
	}
	l, ok := v.([]any)
	if !ok {
		return nil, o.typeErr(name, "list of objects", v)
	}
	out := make([]*Object, len(l))
	for i, x := range l {
		c, ok := x.(*Object)
		if !ok {
			return nil, o.typeErr(fmt.Sprintf("%s[%d]", name, i), "object", x)
		}
		out[i] = c
	}
	return out, nil
}

// Items returns the objects of an ObjectList (its "objects" field).
func (o *Object) Items() ([]*Object, error) { return o.Objects("objects") }

// List returns a List or Set field as primitives.
func (o *Object) List(name string) ([]any, error) {
	v, err := o.lookup(name)
	if err != nil {
		return nil, err
	}
	l, ok := v.([]any)
	if !ok {
		return nil, o.typeErr(name, "list", v)
	}
	return l, nil
}

// Strings returns a List or Set of strings field.
func (o *Object) Strings(name string) ([]string, error) {
	l, err := o.List(name)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(l))
	for i, x := range l {
		s, ok := x.(string)
		if !ok {
			return nil, o.typeErr(fmt.Sprintf("%s[%d]", name, i), "string", x)
		}
		out[i] = s
	}
	return out, nil
}

// Dict returns a Dict field as primitives.
func (o *Object) Dict(name string) (map[string]any, error) {
	v, err := o.lookup(name)
	if err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, o.typeErr(name, "dict", v)
	}
	return m, nil
}

// StringDict returns a DictOfStrings or DictOfNullableStrings field; a None
// value is returned as nil.
func (o *Object) StringDict(name string) (map[string]*string, error) {
	m, err := o.Dict(name)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*string, len(m))
	for k, x := range m {
		switch s := x.(type) {
		case nil:
			out[k] = nil
		case string:
			out[k] = &s
		default:
			return nil, o.typeErr(fmt.Sprintf("%s[%q]", name, k), "string", x)
		}
	}
	return out, nil
}

// JSON decodes a field whose primitive is a JSON document in a string
// (nova's NetworkModel, e.g. InstanceInfoCache.network_info) into out.
func (o *Object) JSON(name string, out any) error {
	s, err := o.String(name)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(s), out); err != nil {
		return fmt.Errorf("ovo: %s.%s: %w", o.Name, name, err)
	}
	return nil
}

// SetString sets a String (or UUID, Enum) field.
func (o *Object) SetString(name, v string) { o.setPrimitive(name, v) }

// SetInt sets an Integer field.
func (o *Object) SetInt(name string, v int64) {
	o.setPrimitive(name, json.Number(strconv.FormatInt(v, 10)))
}

// SetFloat sets a Float field, written as Python writes a float. NaN and
// infinities are not JSON and are refused.
func (o *Object) SetFloat(name string, v float64) error { return o.Set(name, v) }

// SetBool sets a Boolean field.
func (o *Object) SetBool(name string, v bool) { o.setPrimitive(name, v) }

// SetDateTime sets a DateTime field ([FormatDateTime]).
func (o *Object) SetDateTime(name string, t time.Time) {
	o.setPrimitive(name, FormatDateTime(t))
}

// SetIPAddress sets an IPAddress field; an invalid address sets None.
func (o *Object) SetIPAddress(name string, a netip.Addr) {
	if !a.IsValid() {
		o.setPrimitive(name, nil)
		return
	}
	o.setPrimitive(name, a.String())
}

// SetObject sets an object field; a nil object sets None.
func (o *Object) SetObject(name string, v *Object) {
	if v == nil {
		o.setPrimitive(name, nil)
		return
	}
	o.setPrimitive(name, v)
}

// SetObjects sets a list-of-objects field (an ObjectList's "objects").
func (o *Object) SetObjects(name string, items []*Object) {
	l := make([]any, len(items))
	for i, x := range items {
		if x != nil {
			l[i] = x
		}
	}
	o.setPrimitive(name, l)
}

// SetStrings sets a List of strings field.
func (o *Object) SetStrings(name string, v []string) {
	l := make([]any, len(v))
	for i, s := range v {
		l[i] = s
	}
	o.setPrimitive(name, l)
}

// SetStringSet sets a Set of strings field. oslo sends a set as a list in
// set iteration order; here it is sorted, with duplicates removed.
func (o *Object) SetStringSet(name string, v []string) {
	s := append([]string(nil), v...)
	sort.Strings(s)
	l := make([]any, 0, len(s))
	for i, x := range s {
		if i > 0 && s[i-1] == x {
			continue
		}
		l = append(l, x)
	}
	o.setPrimitive(name, l)
}

// SetStringDict sets a DictOfStrings field.
func (o *Object) SetStringDict(name string, v map[string]string) {
	m := make(map[string]any, len(v))
	for k, s := range v {
		m[k] = s
	}
	o.setPrimitive(name, m)
}

// SetJSON sets a field whose primitive is a JSON document in a string
// (nova's NetworkModel). nova writes it with Python's separators (", " and
// ": "); the document here is compact, which nova reads the same way.
func (o *Object) SetJSON(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("ovo: %s.%s: %w", o.Name, name, err)
	}
	o.setPrimitive(name, string(b))
	return nil
}

// FormatFloat writes a float64 as Python's repr and json.dumps do: the
// shortest digits that round-trip, always with a decimal point or an
// exponent ("16.0", "0.1", "1e+16", "1.5e-05").
func FormatFloat(f float64) string {
	if f == 0 {
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	s := strconv.FormatFloat(f, 'e', -1, 64) // d.ddde±XX
	sign := ""
	if s[0] == '-' {
		sign, s = "-", s[1:]
	}
	mant, expStr, _ := strings.Cut(s, "e")
	exp, _ := strconv.Atoi(expStr)
	digits := strings.Replace(mant, ".", "", 1)
	if exp < -4 || exp >= 16 {
		// repr switches to scientific notation outside 1e-4 <= |f| < 1e16
		esign := "+"
		if exp < 0 {
			esign, exp = "-", -exp
		}
		m := digits[:1]
		if len(digits) > 1 {
			m += "." + digits[1:]
		}
		return fmt.Sprintf("%s%se%s%02d", sign, m, esign, exp)
	}
	var b strings.Builder
	b.WriteString(sign)
	switch {
	case exp < 0:
		b.WriteString("0.")
		b.WriteString(strings.Repeat("0", -exp-1))
		b.WriteString(digits)
	case len(digits) <= exp+1:
		b.WriteString(digits)
		b.WriteString(strings.Repeat("0", exp+1-len(digits)))
		b.WriteString(".0")
	default:
		b.WriteString(digits[:exp+1])
		b.WriteByte('.')
		b.WriteString(digits[exp+1:])
	}
	return b.String()
}

// isoRe is iso8601's ISO8601_REGEX (python3-iso8601 1.0.2, used by
// oslo_utils.timeutils.parse_isotime) without its "(?!$)" look-ahead after
// a dash-less month, which parseISO checks after matching.
var isoRe = regexp.MustCompile(`^(?P<year>[0-9]{4})(((-(?P<monthdash>[0-9]{1,2}))|(?P<month>[0-9]{2}))(((-(?P<daydash>[0-9]{1,2}))|(?P<day>[0-9]{2}))(((?P<separator>[ T])(?P<hour>[0-9]{2})(:?(?P<minute>[0-9]{2}))?(:?(?P<second>[0-9]{1,2})([.,](?P<second_fraction>[0-9]+))?)?(?P<timezone>Z|((?P<tz_sign>[-+])(?P<tz_hour>[0-9]{2}):?(?P<tz_minute>[0-9]{2})?))?)?))?)?$`)

// ParseDateTime parses a DateTimeField primitive exactly as oslo does
// (timeutils.parse_isotime, i.e. iso8601.parse_date, then DateTime.coerce):
// ISO 8601 with "T" or " ", optional seconds and fraction (truncated to
// microseconds), "Z" or a ±hh[:mm] offset; a time without offset is UTC.
// A time with an offset keeps it, in a fixed zone named like "+01:00", so
// that [FormatDateTime] writes it back as oslo would.
func ParseDateTime(s string) (time.Time, error) {
	// Python's "$" also matches before a final newline.
	s = strings.TrimSuffix(s, "\n")
	m := isoRe.FindStringSubmatch(s)
	if m == nil {
		return time.Time{}, fmt.Errorf("unable to parse date string %q", s)
	}
	g := func(name string) string { return m[isoRe.SubexpIndex(name)] }
	if g("month") != "" && g("day") == "" && g("daydash") == "" {
		// "(?!$)": YYYYMM alone is not a date
		return time.Time{}, fmt.Errorf("unable to parse date string %q", s)
	}
	num := func(name string, def int) int {
		if v := g(name); v != "" {
			n, _ := strconv.Atoi(v)
			return n
		}
		return def
	}
	year := num("year", 0)
	month := num("month", num("monthdash", 1))
	day := num("day", num("daydash", 1))
	hour, minute, second := num("hour", 0), num("minute", 0), num("second", 0)
	usec := 0
	if f := g("second_fraction"); f != "" {
		if len(f) > 6 {
			f = f[:6]
		}
		f += strings.Repeat("0", 6-len(f))
		usec, _ = strconv.Atoi(f)
	}
	if year < 1 || month < 1 || month > 12 || day < 1 || day > daysIn(year, month) ||
		hour > 23 || minute > 59 || second > 59 {
		return time.Time{}, fmt.Errorf("date string %q is out of range", s)
	}
	loc := time.UTC
	if tz := g("timezone"); tz != "" && tz != "Z" {
		h, mi := num("tz_hour", 0), num("tz_minute", 0)
		name := fmt.Sprintf("%s%02d:%02d", g("tz_sign"), h, mi)
		off := h*3600 + mi*60
		if off >= 24*3600 {
			return time.Time{}, fmt.Errorf("offset of %q is out of range", s)
		}
		if g("tz_sign") == "-" {
			off = -off
		}
		loc = time.FixedZone(name, off)
	}
	return time.Date(year, time.Month(month), day, hour, minute, second, usec*1000, loc), nil
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// isOffsetName reports whether a zone name is an offset as iso8601 names
// its fixed zones: "+hh:mm" or "-hh:mm".
func isOffsetName(s string) bool {
	return len(s) == 6 && (s[0] == '+' || s[0] == '-') && isDigits(s[1:3]) && s[3] == ':' && isDigits(s[4:6])
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// FormatDateTime writes a DateTimeField primitive as oslo does
// (_utils.isotime): "2026-11-24T06:20:00Z", seconds only (the fraction is
// dropped, not rounded). A time in UTC ends in "Z"; a time in a fixed zone
// made by [ParseDateTime] keeps its wall clock and offset name
// ("2026-11-24T07:20:00+01:00"), as a parsed Python datetime does; any
// other location is converted to UTC (oslo would append the zone's name,
// which nothing parses back).
func FormatDateTime(t time.Time) string {
	suffix := "Z"
	if t.Location() != time.UTC {
		if name, _ := t.Zone(); isOffsetName(name) {
			suffix = name
		} else {
			t = t.UTC()
		}
	}
	// strftime("%Y") on glibc does not pad years below 1000.
	return fmt.Sprintf("%d-%02d-%02dT%02d:%02d:%02d%s", t.Year(), int(t.Month()), t.Day(),
		t.Hour(), t.Minute(), t.Second(), suffix)
}

// NormalizeDateTime returns what oslo sends after receiving the DateTime
// primitive s (from_primitive then to_primitive).
func NormalizeDateTime(s string) (string, error) {
	t, err := ParseDateTime(s)
	if err != nil {
		return "", err
	}
	return FormatDateTime(t), nil
}

// IsUUID reports whether s is a UUID in the canonical hyphenated form
// (8-4-4-4-12 hex digits), the form oslo's UUIDField expects (it only warns
// about others).
func IsUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}
