//! Kubernetes object conversion (activator `kubernetes::convert`): any JSON that deserializes as
//! an object is converted as a Revision, Endpoints, Service, ConfigMap and Secret, each giving a
//! value or a clean error, never a panic.
#![no_main]

use activator::kubernetes::convert;
use kube::api::DynamicObject;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(obj) = serde_json::from_slice::<DynamicObject>(data) else {
        return;
    };
    let _ = convert::object_key("Revision", &obj);
    let _ = convert::revision_from_object(&obj);
    if let Ok(Some(endpoints)) = convert::endpoints_from_object(&obj) {
        for port in ["http", "http2", ""] {
            let _ = endpoints.private_dests(port);
            let _ = endpoints.activator_ips(port);
        }
    }
    if let Ok(service) = convert::service_from_object(&obj) {
        let _ = service.cluster_ip_dest("http");
    }
    let _ = convert::config_map_from_object(&obj);
    let _ = convert::secret_from_object(&obj);
});
