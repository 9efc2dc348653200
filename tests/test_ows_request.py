"""Unit tests of twitcher.ows.request over a corpus of valid and hostile OWS requests."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from twitcher.exceptions import (
    InvalidParameterValue,
    MalformedRequest,
    MissingParameterValue,
    OperationNotSupported,
)
from twitcher.ows.request import (
    OWSRequest,
    check_query_agrees,
    decisive_key,
    parse_kvp,
    parse_xml,
    request_for_service,
    xml_parser,
)

CORPUS = Path(__file__).parent / "corpus"


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


@pytest.mark.parametrize("query, expected", [
    ("service=WPS&request=GetCapabilities", OWSRequest("wps", "GetCapabilities")),
    ("SERVICE=wps&REQUEST=describeprocess&VERSION=1.0.0&identifier=all",
     OWSRequest("wps", "describeprocess", "1.0.0")),
    ("Service=WPS&Request=Execute&Version=1.0.0&DataInputs=a=1;b=2", OWSRequest("wps", "Execute", "1.0.0")),
    ("service=WMS&request=GetMap&layers=x", OWSRequest("wms", "GetMap")),
    ("%73ervice=WFS&req%75est=Get%43apabilities", OWSRequest("wfs", "GetCapabilities")),
    ("service=WCS&request=GetCapabilities&access_token=abc", OWSRequest("wcs", "GetCapabilities")),
    ("&&service=WPS&&request=GetStatus&version=2.0.0&", OWSRequest("wps", "GetStatus", "2.0.0")),
])
def test_valid_query_strings_are_parsed(query, expected):
    assert parse_kvp(query) == expected


@pytest.mark.parametrize("query, error, locator", [
    ("request=GetCapabilities", MissingParameterValue, "service"),
    ("service=&request=GetCapabilities", MissingParameterValue, "service"),
    ("service=WPS", MissingParameterValue, "request"),
    ("service=WPS&request=", MissingParameterValue, "request"),
    ("", MissingParameterValue, "service"),
    ("service=WPS&request=GetCapabilities&version=", MissingParameterValue, "version"),
    ("service=SOS&request=GetCapabilities", InvalidParameterValue, "service"),
    ("service=WPS%00&request=GetCapabilities", InvalidParameterValue, "service"),
    ("service=WPS&request=GetCapabilities%20", InvalidParameterValue, "request"),
    ("service=WPS&request=GetCapabilities;request=Execute", InvalidParameterValue, "request"),
    ("service=WPS&request=Get%C4%B0Capabilities", InvalidParameterValue, "request"),
    ("service=WPS&request=GetCapabilities&version=1.0.0;2", InvalidParameterValue, "version"),
])
def test_missing_empty_or_bad_values_are_refused(query, error, locator):
    with pytest.raises(error) as info:
        parse_kvp(query)
    assert type(info.value) is error
    assert info.value.locator == locator
    assert info.value.status == 400


def spellings(key: str) -> list:
    """Ways of writing ``key`` that some backend reads as ``key``: letter case, encoding, padding."""
    alternating = "".join(c.upper() if i % 2 else c for i, c in enumerate(key))
    variants = [key, key.upper(), key.title(), alternating, f"%{ord(key[0]):02x}{key[1:]}",
                f"%{ord(key[0]):02X}{key[1:].upper()}", key + "%20", "+" + key, key + "%00"]
    if "s" in key:
        variants.append(key.replace("s", "ſ"))  # 'ſ'.upper() == 'S'
    if "i" in key:
        variants.append(key.replace("i", "ı"))  # 'ı'.upper() == 'I'
    return variants


BASE = {"service": "WPS", "request": "GetCapabilities", "version": "1.0.0"}
SECOND_VALUE = {"service": "WPS", "request": "Execute", "version": "2.0.0"}


@pytest.mark.parametrize("key, spelled", [(k, s) for k in BASE for s in spellings(k)])
def test_a_decisive_key_given_twice_in_any_spelling_is_refused(key, spelled):
    for query in (f"{'&'.join(f'{k}={v}' for k, v in BASE.items())}&{spelled}={SECOND_VALUE[key]}",
                  f"{spelled}={SECOND_VALUE[key]}&{'&'.join(f'{k}={v}' for k, v in BASE.items())}"):
        with pytest.raises(InvalidParameterValue) as info:
            parse_kvp(query)
        assert info.value.locator == key


@pytest.mark.parametrize("raw, expected", [
    ("REQUEST", "request"), ("Service", "service"), ("%56ersion", "version"), ("requeſt", "request"),
    ("servıce", "service"), ("re quest", "request"), ("requests", None), ("identifier", None),
    ("x" * 100, None), ("", None),
])
def test_decisive_key_folds_case_like_any_backend_might(raw, expected):
    assert decisive_key(raw) == expected


@pytest.mark.parametrize("name, expected", [
    ("wps100_getcapabilities.xml", OWSRequest("wps", "GetCapabilities")),
    ("wps100_describeprocess.xml", OWSRequest("wps", "DescribeProcess", "1.0.0")),
    ("wps100_execute.xml", OWSRequest("wps", "Execute", "1.0.0")),
    ("wps200_getcapabilities.xml", OWSRequest("wps", "GetCapabilities")),
    ("wps200_execute.xml", OWSRequest("wps", "Execute", "2.0.0")),
    ("wps200_getstatus.xml", OWSRequest("wps", "GetStatus", "2.0.0")),
    ("wfs_getcapabilities.xml", OWSRequest("wfs", "GetCapabilities")),
    ("wcs_getcapabilities.xml", OWSRequest("wcs", "GetCapabilities")),
    ("wrong_root.xml", OWSRequest("wps", "RunEverything", "1.0.0")),
])
def test_valid_xml_bodies_are_parsed_by_root_element(name, expected):
    assert parse_xml(corpus(name)) == expected


@pytest.mark.parametrize("body, error, locator", [
    (corpus("xxe_file.xml"), MalformedRequest, None),
    (corpus("xxe_network.xml"), MalformedRequest, None),
    (corpus("billion_laughs.xml"), MalformedRequest, None),
    (corpus("doctype_plain.xml"), MalformedRequest, None),
    (corpus("xxe_file.xml").decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"),
     MalformedRequest, None),
    (corpus("billion_laughs.xml").decode().encode("utf-16"), MalformedRequest, None),
    (corpus("two_roots.xml"), MalformedRequest, None),
    (corpus("undefined_entity.xml"), MalformedRequest, None),
    (corpus("no_service_attribute.xml"), MissingParameterValue, "service"),
    (corpus("unknown_service_type.xml"), InvalidParameterValue, "service"),
    (bytes(range(256)) * 64, MalformedRequest, None),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", MalformedRequest, None),
    (b"", MalformedRequest, None),
    (b"   \n", MalformedRequest, None),
    (b"service=WPS&request=Execute", MalformedRequest, None),
    (b"<wps:Execute service='WPS' xmlns:wps='x'>", MalformedRequest, None),
    (b"<?xml version='1.0'?>", MalformedRequest, None),
])
def test_hostile_or_malformed_bodies_are_refused(body, error, locator):
    with pytest.raises(error) as info:
        parse_xml(body)
    assert type(info.value) is error
    assert info.value.locator == locator
    assert info.value.status == 400


def test_external_entities_are_never_resolved():
    with pytest.raises(MalformedRequest) as info:
        parse_xml(corpus("xxe_file.xml"))
    assert "root:" not in info.value.text


def test_billion_laughs_is_refused_quickly():
    start = time.perf_counter()
    with pytest.raises(MalformedRequest):
        parse_xml(corpus("billion_laughs.xml").decode().encode("utf-16"))
    assert time.perf_counter() - start < 1.0


def test_each_thread_gets_its_own_hardened_parser():
    parsers = []
    thread = threading.Thread(target=lambda: parsers.append(xml_parser()))
    thread.start()
    thread.join(timeout=5)
    assert parsers and parsers[0] is not xml_parser()
    assert xml_parser() is xml_parser()


@pytest.mark.parametrize("ows, service_type, expected", [
    (OWSRequest("wps", "getCAPABILITIES"), "wps", "getcapabilities"),
    (OWSRequest("wps", "Dismiss", "2.0.0"), "wps", "dismiss"),
    (OWSRequest("wms", "GetMap"), "wms", "getmap"),
    (OWSRequest("wfs", "SomeVendorOperation"), "wfs", "somevendoroperation"),
])
def test_request_name_is_judged_by_the_registered_type(ows, service_type, expected):
    assert request_for_service(ows, service_type) == expected


def test_a_service_type_other_than_the_registered_one_is_refused():
    with pytest.raises(InvalidParameterValue) as info:
        request_for_service(OWSRequest("wms", "GetCapabilities"), "wps")
    assert info.value.locator == "service"


def test_an_unknown_wps_operation_is_not_supported():
    with pytest.raises(OperationNotSupported) as info:
        request_for_service(parse_xml(corpus("wrong_root.xml")), "wps")
    assert (info.value.status, info.value.locator) == (400, "RunEverything")


@pytest.mark.parametrize("query", ["", "request=Execute", "SERVICE=wps&request=execute&version=1.0.0", "foo=bar"])
def test_query_string_of_a_post_may_repeat_what_the_body_says(query):
    check_query_agrees(parse_xml(corpus("wps100_execute.xml")), query)


@pytest.mark.parametrize("query, locator", [
    ("request=GetCapabilities", "request"),
    ("service=WMS", "service"),
    ("version=2.0.0", "version"),
    ("request=Execute&REQUEST=Execute", "request"),
])
def test_query_string_of_a_post_that_disagrees_with_the_body_is_refused(query, locator):
    with pytest.raises(InvalidParameterValue) as info:
        check_query_agrees(parse_xml(corpus("wps100_execute.xml")), query)
    assert info.value.locator == locator


def test_version_in_the_query_of_a_post_without_version_in_the_body_is_refused():
    with pytest.raises(InvalidParameterValue):
        check_query_agrees(parse_xml(corpus("wps100_getcapabilities.xml")), "version=1.0.0")


@pytest.mark.parametrize("query, locator", [
    ("service=WPS&request=GetCapabilities&foo=x;request=Execute", "request"),
    ("foo=x;REQUEST=Execute&service=WPS&request=GetCapabilities", "request"),
    ("service=WPS&request=GetCapabilities&a=1;service=WMS", "service"),
    ("service=WPS&request=GetCapabilities&a=b;version=1;version=2", "version"),
    ("service=WPS&request=GetCapabilities&foo;request=Execute", "request"),
])
def test_a_decisive_key_hidden_behind_a_semicolon_counts_as_given(query, locator):
    with pytest.raises(InvalidParameterValue) as info:
        parse_kvp(query)
    assert info.value.locator == locator


def test_semicolons_inside_wps_data_inputs_are_left_alone():
    query = "service=WPS&request=Execute&identifier=p&DataInputs=a=1;b=2;c=x@uom=m"
    assert parse_kvp(query) == OWSRequest("wps", "Execute")
