package vcenter

import "testing"

func TestAboutVersionNumber(t *testing.T) {
	t.Parallel()
	tests := []struct {
		version string
		want    int64
		wantErr bool
	}{
		{version: "8.0.3", want: 8000003},
		{version: "7.0.3", want: 7000003},
		{version: "6.5.0", want: 6005000},
		{version: "7.0.3.01000", want: 7000004000},
		{version: "8", want: 8},
		{version: "9.0.0rc1", want: 9000000},
		{version: "", wantErr: true},
		{version: "8.x", wantErr: true},
		{version: "8..0", wantErr: true},
	}
	for _, tc := range tests {
		got, err := About{Version: tc.version}.VersionNumber()
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("VersionNumber(%q) = %d, %v; want %d, error %t", tc.version, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want int
	}{
		{"8.0.3.0", "9.1.0.0", -1},
		{"9.1.0.0", "9.1.0.0", 0},
		{"9.1", "9.1.0.0", 0},
		{"10.0", "9.1.0.0", 1},
	}
	for _, tc := range tests {
		if got := compareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("compareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
