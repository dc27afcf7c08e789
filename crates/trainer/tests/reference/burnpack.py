"""Minimal reader for burn's burnpack (.bpk) files: 'NRUB', u16 version, u32 metadata length, CBOR metadata, data."""
import struct, numpy as np

def _cbor(buf, i):
    ib = buf[i]; i += 1
    major, info = ib >> 5, ib & 31
    def arg(info, i):
        if info < 24: return info, i
        n = {24: 1, 25: 2, 26: 4, 27: 8}[info]
        return int.from_bytes(buf[i:i+n], 'big'), i + n
    if major == 7:
        if info == 20: return False, i
        if info == 21: return True, i
        if info == 22: return None, i
        if info == 25: return struct.unpack('>e', buf[i:i+2])[0], i+2
        if info == 26: return struct.unpack('>f', buf[i:i+4])[0], i+4
        if info == 27: return struct.unpack('>d', buf[i:i+8])[0], i+8
        raise ValueError(f"simple {info}")
    v, i = arg(info, i)
    if major == 0: return v, i
    if major == 1: return -1 - v, i
    if major == 2: return bytes(buf[i:i+v]), i + v
    if major == 3: return buf[i:i+v].decode(), i + v
    if major == 4:
        out = []
        for _ in range(v):
            x, i = _cbor(buf, i); out.append(x)
        return out, i
    if major == 5:
        out = {}
        for _ in range(v):
            k, i = _cbor(buf, i); x, i = _cbor(buf, i); out[k] = x
        return out, i
    if major == 6:
        return _cbor(buf, i)
    raise ValueError(major)

def read(path):
    buf = open(path, 'rb').read()
    assert buf[:4] == b'NRUB', buf[:4]
    ver, = struct.unpack('<H', buf[4:6]); mlen, = struct.unpack('<I', buf[6:10])
    meta, end = _cbor(buf, 10)
    assert end == 10 + mlen, (end, mlen)
    tensors = meta['tensors']
    maxend = max(t['data_offsets'][1] for t in tensors.values())
    # data section: the remainder of the file
    data_start = len(buf) - maxend
    out = {}
    for name, t in tensors.items():
        a, b = t['data_offsets']
        assert t['dtype'] == 'F32', t['dtype']
        arr = np.frombuffer(buf[data_start + a: data_start + b], dtype='<f4').reshape(t['shape'])
        out[name] = arr.copy()
    return out, {k: v for k, v in meta.items() if k != 'tensors'}, data_start, 10 + mlen

if __name__ == '__main__':
    import sys
    t, meta, ds, me = read(sys.argv[1])
    print('metadata end', me, 'data start', ds, 'meta', meta)
    for k, v in list(t.items()):
        print(k, v.shape, float(np.abs(v).mean()))
