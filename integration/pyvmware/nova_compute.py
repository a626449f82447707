#!/usr/bin/python3
"""Start the real Python nova-compute (Debian's python3-nova) in this process.

Debian's /usr/bin/nova-compute comes with the package nova-compute, which
pulls libvirt and qemu; python3-nova alone has the code. This is what that
console script does, plus one in-process fix of a nova bug the VMware driver
cannot work around (see below). Arguments are nova-compute's
(--config-file ...).

The fix: in this nova (26.x, Zed, Debian 12), GlanceImageServiceV2.download()
for a caller that streams the image itself (no data file, no dst_path: the
VMware driver's fetch_image) hands back glance's chunk iterator from
_verify_and_write(), whose `finally:` has already closed it. The driver then
announces Content-Length = image size to the datastore, sends 0 bytes and
waits for the answer forever: the boot never ends. Here such a download
returns the open iterator straight from glance's client instead (when no
signature verification is asked for; everything else goes to nova's code).
Set VCAGENT_PY_NO_GLANCE_FIX=1 to run nova unchanged.
"""
import os
import sys

# first: nova.cmd applies eventlet's monkey patching on import
from nova.cmd.compute import main


def _fix_glance_streaming():
    from nova import exception
    from nova.image import glance

    service = glance.GlanceImageServiceV2
    download = service.download

    def streaming_download(self, context, image_id, data=None, dst_path=None,
                           trusted_certs=None):
        if (data is not None or dst_path is not None or
                self._get_verifier(context, image_id, trusted_certs)
                is not None):
            return download(self, context, image_id, data=data,
                            dst_path=dst_path, trusted_certs=trusted_certs)
        try:
            chunks = self._client.call(context, 2, 'data', args=(image_id,))
        except Exception:
            glance._reraise_translated_image_exception(image_id)
        if chunks.wrapped is None:
            raise exception.ImageUnacceptable(
                image_id=image_id, reason='Image has no associated data')
        return chunks

    service.download = streaming_download


if os.environ.get('VCAGENT_PY_NO_GLANCE_FIX') != '1':
    _fix_glance_streaming()

if __name__ == '__main__':
    sys.exit(main())
