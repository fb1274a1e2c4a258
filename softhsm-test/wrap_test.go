package softhsmtest

import (
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestKeyWrapPadVectors checks KeyWrapPad against RFC 5649's test vectors.
func TestKeyWrapPadVectors(t *testing.T) {
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		require.NoError(t, err)
		return b
	}
	kek := unhex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
	for pt, want := range map[string]string{
		"c37b7e6492584340bed12207808941155068f738": "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
		"466f7250617369": "afbeb0f07dfbf5419200f2ccb50bb24f",
	} {
		got, err := KeyWrapPad(kek, unhex(pt))
		require.NoError(t, err)
		require.Equal(t, want, hex.EncodeToString(got))
	}
}
