"""The Huawei Cloud Workspace edge: HTTP client, request signing, rate limiting, and a local simulator."""
