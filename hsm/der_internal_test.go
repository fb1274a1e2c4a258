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
