package hsm

import (
	"bytes"
	"encoding/asn1"
	"math/big"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestECDSARawToDER checks the signature encoding against encoding/asn1's
// for the sizes of P-256, P-384 and P-521, with the edge cases of
// INTEGER encoding: the high bit set (a zero byte in front), leading zeros
// (dropped), a one-byte value, and the longest values (P-521's SEQUENCE
// needs a two-byte length), up to the longest halves it takes (124 bytes).
func TestECDSARawToDER(t *testing.T) {
	type sig struct{ R, S *big.Int }
	for _, n := range []int{32, 48, 66, 124} {
		half := func(fill byte, lead int) []byte {
			v := bytes.Repeat([]byte{fill}, n)
			for i := range lead {
				v[i] = 0
			}
			return v
		}
		one := make([]byte, n)
		one[n-1] = 1
		cases := map[string][2][]byte{
			"high bit":      {half(0xff, 0), half(0x80, 0)},
			"no high bit":   {half(0x7f, 0), half(0x01, 0)},
			"leading zeros": {half(0xff, 1), half(0x80, 5)},
			"one":           {one, half(0x42, 0)},
		}
		for name, c := range cases {
			raw := append(bytes.Clone(c[0]), c[1]...)
			got, err := ecdsaRawToDER(raw)
			require.NoError(t, err, "%d bytes, %s", n, name)
			want, err := asn1.Marshal(sig{new(big.Int).SetBytes(c[0]), new(big.Int).SetBytes(c[1])})
			require.NoError(t, err)
			require.Equal(t, want, got, "%d bytes, %s", n, name)
		}
		_, err := ecdsaRawToDER(append(make([]byte, n), half(0x42, 0)...))
		require.Error(t, err, "a zero r must be refused")
	}
	for _, bad := range [][]byte{nil, {1}, {1, 2, 3}, bytes.Repeat([]byte{0xff}, 2*125)} {
		_, err := ecdsaRawToDER(bad)
		require.Error(t, err)
	}
}

// TestECPoint: CKA_EC_POINT as DER OCTET STRING or bare, and only of the
// curve's length. A bare P-256 point whose X starts with 0x1f reads as a
// 31-byte OCTET STRING followed by more bytes: it must not be cut to that.
func TestECPoint(t *testing.T) {
	point := append([]byte{4}, bytes.Repeat([]byte{0x1f}, 64)...)
	der, err := asn1.Marshal(point)
	require.NoError(t, err)
	require.Equal(t, point, ecPoint(der, ECP256))
	require.Equal(t, point, ecPoint(point, ECP256), "a bare point")
	require.Nil(t, ecPoint(point[:40], ECP256), "too short")
	require.Nil(t, ecPoint(der, ECP384), "another curve's length")
	require.Nil(t, ecPoint(append(der, 0), ECP256), "trailing bytes")
}
