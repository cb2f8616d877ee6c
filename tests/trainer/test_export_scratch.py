from tests.fixtures.s3 import S3Server

def test_conflict(s3_server: S3Server, s3_bucket: str) -> None:
    c = s3_server.client()
    c.put_object(Bucket=s3_bucket, Key="out/a.bin/blocker", Body=b"x")
    try:
        c.put_object(Bucket=s3_bucket, Key="out/a.bin", Body=b"y" * 10)
        print("PUT accepted", c.list_objects_v2(Bucket=s3_bucket)["Contents"])
    except Exception as e:
        print("PUT refused", e)
    try:
        c.put_object(Bucket=s3_bucket, Key="out/b.bin", Body=b"y" * 10)
        c.put_object(Bucket=s3_bucket, Key="out/b.bin/x", Body=b"y" * 10)
        print("child PUT accepted")
    except Exception as e:
        print("child PUT refused", e)
    h = c.head_object(Bucket=s3_bucket, Key="out/b.bin")
    print(h["ETag"], h["LastModified"], h.get("Metadata"))
