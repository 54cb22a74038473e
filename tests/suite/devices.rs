//! Which devices the device-generic tests run on (printed with `--nocapture`),
//! and a check that `BURN_DISTILL_REQUIRE_WGPU` really puts wgpu in the list.

use crate::common;

use burn::tensor::Tensor;
use common::devices;

#[test]
fn device_list() {
    let list = devices();
    for (name, device) in &list {
        // Run one op on each, so a broken device fails here by name.
        let sum = Tensor::<1>::from_floats([1.0, 2.0, 3.0], device)
            .sum()
            .into_scalar::<f32>();
        assert_eq!(sum, 6.0, "{name}");
        println!("device {name}: {device:?}");
    }
    assert!(list.iter().any(|(n, _)| *n == "flex") && list.iter().any(|(n, _)| *n == "ndarray"));
    if std::env::var_os("BURN_DISTILL_REQUIRE_WGPU").is_some() {
        assert!(
            list.iter().any(|(n, _)| *n == "wgpu"),
            "BURN_DISTILL_REQUIRE_WGPU is set: build the tests with --features wgpu"
        );
    }
}
