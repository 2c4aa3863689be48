"""The one S3 URI parser: ``s3://bucket/prefix`` → ``S3Location`` (no I/O, no boto3)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import S3UriError

SCHEME = "s3://"


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (no leading or trailing slash); a folder or one object."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str, *, need_key: bool = False) -> S3Location:
        """``need_key``: the URI must name something inside the bucket (an input file, an object)."""
        if not uri.startswith(SCHEME):
            if need_key:
                raise S3UriError(f"{uri!r} is not an s3://bucket/key URI")
            raise S3UriError(f"expected an s3://bucket/prefix URI, got {uri!r}")
        bucket, _, prefix = uri[len(SCHEME) :].partition("/")
        if need_key and (not bucket or not prefix.strip("/")):
            raise S3UriError(f"{uri!r} is not an s3://bucket/key URI (bucket and key both needed)")
        if not bucket:
            raise S3UriError(f"no bucket in S3 URI {uri!r}")
        return cls(bucket=bucket, prefix=prefix.strip("/"))

    def child(self, *parts: str) -> S3Location:
        joined = "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))
        return S3Location(self.bucket, joined)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def dir_prefix(self) -> str:
        """Prefix for listing this location's children ('' at the bucket root)."""
        return f"{self.prefix}/" if self.prefix else ""

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"

    def __str__(self) -> str:
        return self.uri


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` → (bucket, key exactly as written); ``S3UriError`` (a ValueError) naming the URI."""
    loc = S3Location.parse(uri, need_key=True)
    return loc.bucket, uri[len(SCHEME) + len(loc.bucket) + 1 :]
