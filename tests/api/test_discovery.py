"""The discovery document and the exported config, checked the way clients
use them: googleapiclient (patched by the real ``arvados`` SDK, as every
Arvados tool is) builds a client from the document, and the requests it
would send are inspected. No network: ``HttpMock`` stands in for the wire
because what is under test is what the client *builds* from the document.
"""
from __future__ import annotations

import json
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

from arvados import api as arvados_api  # importing it patches googleapiclient as the tools do
import yaml
from googleapiclient import discovery as google_discovery
from googleapiclient.discovery import build_from_document
from googleapiclient.http import HttpMock, HttpMockSequence
from twisted.trial.unittest import SynchronousTestCase

from arvnode.api.config_export import exported_config
from arvnode.api.discovery import discovery_document
from arvnode.config import Config, config_from_string

CLUSTER = "zzzzz"
ROOT = "https://ctl.example:8443/"
SECRETS = {
    "SystemRootToken": "RootTokenSecret0123456789abcdefghijklmnop",
    "ManagementToken": "MgmtTokenSecret0123456789abcdefghijklmnop",
    "BlobSigningKey": "BlobKeySecret0123456789abcdefghijklmnopqr",
    "AnonymousUserToken": "AnonTokenSecret0123456789abcdefghijklmnop",
    "DBPassword": "DbPasswordSecret0123456789",
    "S3SecretKey": "S3SecretKeySecret0123456789",
}


def make_config(**overrides: Any) -> Config:
    cluster: dict[str, Any] = {
        "SystemRootToken": SECRETS["SystemRootToken"],
        "ManagementToken": SECRETS["ManagementToken"],
        "Services": {
            "Controller": {"ExternalURL": ROOT.rstrip("/"),
                           "InternalURLs": {"https://127.0.0.1:8443/": {}}},
            "Keepproxy": {"ExternalURL": "http://keep.example:25107/",
                          "InternalURLs": {"http://127.0.0.1:25107/": {}}},
        },
        "Collections": {"BlobSigningKey": SECRETS["BlobSigningKey"], "DefaultReplication": 1,
                        "BlobSigningTTL": "336h"},
        "Users": {"AnonymousUserToken": SECRETS["AnonymousUserToken"]},
        "PostgreSQL": {"Connection": {"host": "127.0.0.1", "user": "arvados",
                                      "password": SECRETS["DBPassword"], "dbname": "arvados"}},
        "Volumes": {f"{CLUSTER}-nyw5e-000000000000000": {
            "Driver": "S3",
            "DriverParameters": {"Bucket": "b", "AccessKeyID": "AKIDEXAMPLE",
                                 "SecretAccessKey": SECRETS["S3SecretKey"]},
        }},
        "RemoteClusters": {
            "yyyyy": {"Host": "yyyyy.example:8443", "Proxy": True, "Scheme": "https",
                      "Insecure": False, "ActivateUsers": True},
            "*": {"Proxy": False},
        },
        "Login": {"LoginCluster": "yyyyy"},
    }
    cluster.update(overrides)
    return config_from_string(yaml.safe_dump({"Clusters": {CLUSTER: cluster}}))


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def methods(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for rname, resource in doc["resources"].items():
        for mname, method in resource["methods"].items():
            yield rname, mname, method


class DiscoveryDocumentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.config = make_config()
        self.doc = discovery_document(self.config)
        self.client = build_from_document(self.doc, http=HttpMock(headers={"status": "200"}))

    def query(self, request: Any) -> dict[str, list[str]]:
        return parse_qs(urlsplit(request.uri).query)

    def test_top_level_fields_come_from_config(self) -> None:
        """rootUrl is the controller's external URL with a trailing slash (all
        calls after discovery go there); uuidPrefix is the cluster id and the
        replication default is the configured one (the SDK assumes 2 without it)."""
        d = self.doc
        self.assertEqual(d["rootUrl"], ROOT)
        self.assertEqual(d["servicePath"], "arvados/v1/")
        self.assertEqual(d["baseUrl"], ROOT + "arvados/v1/")
        self.assertEqual(d["uuidPrefix"], CLUSTER)
        self.assertEqual(d["defaultCollectionReplication"], 1)
        self.assertEqual(d["blobSignatureTtl"], 336 * 3600)
        self.assertEqual(d["maxRequestSize"], 134217728)
        self.assertEqual(d["remoteHosts"], {"yyyyy": "yyyyy.example:8443"})
        self.assertEqual(d["batchPath"], "batch")
        self.assertEqual(set(d["parameters"]), {"alt", "fields", "key", "oauth_token"})

    def test_no_data_wrapper_feature(self) -> None:
        """With features: [dataWrapper] googleapiclient would wrap bodies in
        {"data": ...}; the document must not ask for it."""
        self.assertNotIn("dataWrapper", json.dumps(self.doc.get("features", [])))

    def test_every_ref_resolves(self) -> None:
        """Every $ref names a schema, or the SDK raises KeyError on first use."""
        refs = {v["$ref"] for v in walk(self.doc) if isinstance(v, dict) and "$ref" in v}
        self.assertTrue(refs)
        self.assertEqual(refs - set(self.doc["schemas"]), set())
        for model in ("Collection", "CollectionList", "User", "UserList", "Group", "GroupList",
                      "Link", "LinkList", "ApiClientAuthorization", "ApiClientAuthorizationList",
                      "KeepService", "KeepServiceList", "Workflow", "WorkflowList"):
            self.assertIn(model, self.doc["schemas"])

    def test_schemas_carry_uuid_prefixes(self) -> None:
        """arv-copy finds an object's type through schemas' uuidPrefix."""
        prefixes = {k: v.get("uuidPrefix") for k, v in self.doc["schemas"].items()}
        self.assertEqual(prefixes["Collection"], "4zz18")
        self.assertEqual(prefixes["Group"], "j7d0g")
        self.assertEqual(prefixes["User"], "tpzed")
        self.assertEqual(prefixes["Workflow"], "7fd4e")

    def test_methods_are_complete(self) -> None:
        """Every method has id/path/httpMethod/response; POST and PUT take a
        body; every parameter has a type and a location (else it is dropped);
        path parameters are in parameterOrder."""
        for rname, mname, m in methods(self.doc):
            where = f"{rname}.{mname}"
            self.assertEqual(m["id"], f"arvados.{rname}.{mname}", where)
            self.assertIn("response", m, where)
            self.assertIn(m["httpMethod"], ("GET", "POST", "PUT", "DELETE"), where)
            if m["httpMethod"] in ("PUT",) or mname == "create":
                self.assertEqual(m["request"]["required"], True, where)
            for pname, p in m["parameters"].items():
                self.assertIn(p["location"], ("query", "path"), f"{where}.{pname}")
                self.assertIn(p["type"], ("string", "integer", "boolean", "array", "object"),
                              f"{where}.{pname}")
                if p["location"] == "path":
                    self.assertIn("{%s}" % pname, m["path"], f"{where}.{pname}")
                    self.assertIn(pname, m["parameterOrder"], f"{where}.{pname}")
            for name in ("filters", "order", "select", "where"):
                if name in m["parameters"]:
                    self.assertIn(m["parameters"][name]["type"], ("array", "object"),
                                  f"{where}.{name}")

    def test_declared_resources_and_methods(self) -> None:
        """The methods the SDK tools and the issue need are all declared,
        with the paths real Arvados uses."""
        paths = {f"{r}.{m}": (x["httpMethod"], x["path"]) for r, m, x in methods(self.doc)}
        expected = {
            "collections.get": ("GET", "collections/{uuid}"),
            "collections.list": ("GET", "collections"),
            "collections.create": ("POST", "collections"),
            "collections.update": ("PUT", "collections/{uuid}"),
            "collections.delete": ("DELETE", "collections/{uuid}"),
            "collections.trash": ("POST", "collections/{uuid}/trash"),
            "collections.untrash": ("POST", "collections/{uuid}/untrash"),
            "users.current": ("GET", "users/current"),
            "users.system": ("GET", "users/system"),
            "users.get": ("GET", "users/{uuid}"),
            "users.list": ("GET", "users"),
            "users.create": ("POST", "users"),
            "users.update": ("PUT", "users/{uuid}"),
            "users.activate": ("POST", "users/{uuid}/activate"),
            "users.unsetup": ("POST", "users/{uuid}/unsetup"),
            "api_client_authorizations.current": ("GET", "api_client_authorizations/current"),
            "api_client_authorizations.create": ("POST", "api_client_authorizations"),
            "api_client_authorizations.delete": ("DELETE", "api_client_authorizations/{uuid}"),
            "groups.get": ("GET", "groups/{uuid}"),
            "groups.contents": ("GET", "groups/contents"),
            "groups.trash": ("POST", "groups/{uuid}/trash"),
            "links.create": ("POST", "links"),
            "links.list": ("GET", "links"),
            "keep_services.accessible": ("GET", "keep_services/accessible"),
            "keep_services.create": ("POST", "keep_services"),
            "workflows.get": ("GET", "workflows/{uuid}"),
            "workflows.update": ("PUT", "workflows/{uuid}"),
            "configs.get": ("GET", "config"),
        }
        for name, value in expected.items():
            self.assertEqual(paths.get(name), value, name)
        self.assertNotIn("vocabularies", self.doc["resources"])

    def test_every_method_builds_a_request(self) -> None:
        """googleapiclient builds the client, and every declared method turns
        into a request for rootUrl + servicePath + path with its HTTP method."""
        for rname, mname, m in methods(self.doc):
            kwargs: dict[str, Any] = {p: "zzzzz-xxxxx-012345678901234" for p in m["parameterOrder"]}
            if "request" in m:
                kwargs["body"] = {"name": "x"}
            request = getattr(getattr(self.client, rname)(), mname)(**kwargs)
            expected_path = "/arvados/v1/" + m["path"].replace(
                "{uuid}", "zzzzz-xxxxx-012345678901234")
            self.assertEqual(request.method, m["httpMethod"], f"{rname}.{mname}")
            self.assertEqual(urlsplit(request.uri).path, expected_path, f"{rname}.{mname}")
            self.assertTrue(request.uri.startswith(ROOT + "arvados/v1/"), request.uri)
            self.assertEqual(self.query(request).get("alt"), ["json"])

    def test_list_sends_json_filters_and_select(self) -> None:
        """filters/select/order go out as JSON text in the query string, the
        way the Arvados API parses them; limit as a number."""
        request = self.client.collections().list(
            filters=[["uuid", "=", "zzzzz-4zz18-000000000000000"]],
            select=["uuid", "portable_data_hash"], order=["created_at asc"], limit=10,
            include_trash=True, count="none")
        q = self.query(request)
        self.assertEqual(json.loads(q["filters"][0]), [["uuid", "=", "zzzzz-4zz18-000000000000000"]])
        self.assertEqual(json.loads(q["select"][0]), ["uuid", "portable_data_hash"])
        self.assertEqual(json.loads(q["order"][0]), ["created_at asc"])
        self.assertEqual(q["limit"], ["10"])
        self.assertEqual(q["include_trash"], ["true"])
        self.assertEqual(q["count"], ["none"])

    def test_order_as_plain_string_goes_out_unchanged(self) -> None:
        """arv-copy passes order="created_at asc" as a string."""
        request = self.client.collections().list(order="created_at asc")
        self.assertEqual(self.query(request)["order"], ["created_at asc"])

    def test_get_by_pdh_percent_encodes_plus(self) -> None:
        """A PDH in the path arrives with %2B, so the server must unquote it."""
        pdh = "d41d8cd98f00b204e9800998ecf8427e+0"
        request = self.client.collections().get(uuid=pdh, select=["manifest_text"])
        self.assertEqual(urlsplit(request.uri).path,
                         "/arvados/v1/collections/d41d8cd98f00b204e9800998ecf8427e%2B0")
        self.assertEqual(json.loads(self.query(request)["select"][0]), ["manifest_text"])

    def test_create_sends_flat_body_and_ensure_unique_name(self) -> None:
        """The SDK sends attributes flat (not under "collection") and
        ensure_unique_name as a query parameter."""
        body = {"name": "n", "manifest_text": "", "owner_uuid": "zzzzz-tpzed-000000000000000"}
        request = self.client.collections().create(body=body, ensure_unique_name=True)
        self.assertEqual(request.method, "POST")
        self.assertEqual(json.loads(request.body), body)
        self.assertEqual(self.query(request)["ensure_unique_name"], ["true"])
        self.assertEqual(request.headers["content-type"], "application/json")

    def test_update_and_replace_files(self) -> None:
        """update sends the given keys only; replace_files is JSON in the query."""
        request = self.client.collections().update(
            uuid="zzzzz-4zz18-000000000000000", body={"name": "new"},
            replace_files={"/a": "d41d8cd98f00b204e9800998ecf8427e+0/a"})
        self.assertEqual(request.method, "PUT")
        self.assertEqual(json.loads(request.body), {"name": "new"})
        self.assertEqual(json.loads(self.query(request)["replace_files"][0]),
                         {"/a": "d41d8cd98f00b204e9800998ecf8427e+0/a"})

    def test_group_contents_parameters(self) -> None:
        """groups.contents takes uuid in the query plus recursive/include."""
        request = self.client.groups().contents(
            uuid="zzzzz-j7d0g-000000000000000", recursive=True, include=["owner_uuid"],
            exclude_home_project=True, filters=[["uuid", "is_a", "arvados#collection"]])
        q = self.query(request)
        self.assertEqual(urlsplit(request.uri).path, "/arvados/v1/groups/contents")
        self.assertEqual(q["uuid"], ["zzzzz-j7d0g-000000000000000"])
        self.assertEqual(q["recursive"], ["true"])
        self.assertEqual(json.loads(q["include"][0]), ["owner_uuid"])

    def test_responses_are_parsed_as_json(self) -> None:
        """Every method declares a response, so results come back as dicts
        (without one, arv-put crashed on raw bytes)."""
        record = {"uuid": "zzzzz-4zz18-000000000000000", "manifest_text": ""}
        http = HttpMockSequence([({"status": "200"}, json.dumps(record).encode())])
        client = build_from_document(self.doc, http=http)
        self.assertEqual(client.collections().get(uuid=record["uuid"]).execute(), record)
        http = HttpMockSequence([({"status": "200"}, b'{"ClusterID": "zzzzz"}')])
        client = build_from_document(self.doc, http=http)
        self.assertEqual(client.configs().get().execute(), {"ClusterID": "zzzzz"})

    def test_undeclared_parameter_is_refused_client_side(self) -> None:
        """A sanity check of the harness: the SDK's JSON casting is active (as
        in every Arvados tool), and googleapiclient rejects unknown keywords,
        which is why every parameter must be declared."""
        self.assertIs(google_discovery._cast, arvados_api._cast_objects_too)
        self.assertRaises(TypeError, self.client.collections().get,
                          uuid="zzzzz-4zz18-000000000000000", nonsense=1)

    def test_json_serialisable_and_deterministic(self) -> None:
        """The same config renders the same bytes (so it can be cached)."""
        self.assertEqual(json.dumps(self.doc, sort_keys=True),
                         json.dumps(discovery_document(self.config), sort_keys=True))

    def test_controller_url_path_kept(self) -> None:
        """A controller behind a path prefix keeps it in rootUrl."""
        doc = discovery_document(make_config(Services={
            "Controller": {"ExternalURL": "https://ctl.example/arv",
                           "InternalURLs": {"https://127.0.0.1:8443/": {}}},
            "Keepproxy": {"ExternalURL": "http://keep.example:25107/",
                          "InternalURLs": {"http://127.0.0.1:25107/": {}}}}))
        self.assertEqual(doc["rootUrl"], "https://ctl.example/arv/")


    def test_controller_url_argument_wins(self) -> None:
        """The URL the node actually listens on can be passed in; it gets a
        trailing slash and also sets baseUrl."""
        doc = discovery_document(self.config, controller_url="https://127.0.0.1:40001")
        self.assertEqual(doc["rootUrl"], "https://127.0.0.1:40001/")
        self.assertEqual(doc["baseUrl"], "https://127.0.0.1:40001/arvados/v1/")
        bare = Config(cluster_id=CLUSTER, system_root_token="x" * 32)
        self.assertRaises(ValueError, discovery_document, bare)
        self.assertEqual(discovery_document(bare, "https://h:1/")["rootUrl"], "https://h:1/")


class ExportedConfigTests(SynchronousTestCase):
    def test_public_fields(self) -> None:
        """ClusterID, replication, TTL as a Go duration, remote clusters'
        addresses, service URLs and the login cluster, in Arvados' names."""
        exported = exported_config(make_config())
        self.assertEqual(exported["ClusterID"], CLUSTER)
        self.assertEqual(exported["Collections"]["DefaultReplication"], 1)
        self.assertEqual(exported["Collections"]["BlobSigningTTL"], "336h0m0s")
        self.assertIs(exported["Collections"]["CollectionVersioning"], False)
        self.assertEqual(exported["RemoteClusters"]["yyyyy"], {
            "Host": "yyyyy.example:8443", "Proxy": True, "Scheme": "https",
            "Insecure": False, "ActivateUsers": True})
        self.assertEqual(exported["Services"]["Controller"]["ExternalURL"],
                         "https://ctl.example:8443")
        self.assertEqual(exported["Services"]["Keepproxy"]["ExternalURL"],
                         "http://keep.example:25107/")
        self.assertEqual(exported["Login"]["LoginCluster"], "yyyyy")
        self.assertEqual(exported["API"]["MaxRequestSize"], 134217728)
        json.dumps(exported)

    def test_default_storage_class_when_none_configured(self) -> None:
        """With no StorageClasses the SDK still sees one Default class, so it
        requests (and gets confirmed) a class on every PUT."""
        exported = exported_config(make_config())
        self.assertEqual(exported["StorageClasses"], {"default": {"Default": True, "Priority": 0}})
        bare = Config(cluster_id=CLUSTER, system_root_token="x" * 32, storage_classes={})
        self.assertEqual(exported_config(bare)["StorageClasses"],
                         {"default": {"Default": True, "Priority": 0}})

    def test_configured_storage_classes(self) -> None:
        """Configured classes are exported with their Default and Priority."""
        config = make_config(
            StorageClasses={"fast": {"Default": True, "Priority": 10}, "cold": {"Priority": 1}},
            Volumes={f"{CLUSTER}-nyw5e-000000000000000": {
                "Driver": "Directory", "DriverParameters": {"Root": "/tmp/x"},
                "StorageClasses": {"fast": True, "cold": True}}})
        self.assertEqual(exported_config(config)["StorageClasses"], {
            "fast": {"Default": True, "Priority": 10},
            "cold": {"Default": False, "Priority": 1}})


class SecretsTests(SynchronousTestCase):
    def test_no_secret_in_either_document(self) -> None:
        """No token, key or password from the config appears anywhere in the
        discovery document or the exported config (both are served without
        auth or to any user)."""
        config = make_config()
        for name, doc in (("discovery", discovery_document(config)),
                          ("config", exported_config(config))):
            text = json.dumps(doc)
            for label, secret in SECRETS.items():
                self.assertNotIn(secret, text, f"{label} leaked into the {name} document")
            for key in ("SystemRootToken", "ManagementToken", "BlobSigningKey",
                        "AnonymousUserToken", "PostgreSQL", "password", "SecretAccessKey"):
                self.assertNotIn(key, text, f"{key} appears in the {name} document")
