//! How the crate's losses print as burn modules.

use burn::module::DisplaySettings;

/// The losses' settings on one line (`KdLoss {temperature: 4, …}`), as
/// burn-nn's losses print.
pub(crate) fn one_line_display() -> Option<DisplaySettings> {
    DisplaySettings::new()
        .with_new_line_after_attribute(false)
        .optional()
}
