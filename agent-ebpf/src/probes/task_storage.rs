//! A BTF-defined task local storage map (BPF_MAP_TYPE_TASK_STORAGE): one value per task,
//! reached through the task pointer, with no hashing and no capacity to exhaust. aya-ebpf 0.2
//! has no wrapper for it; the definition follows the kernel's BTF map convention (each field's
//! pointee encodes one attribute), and the loader creates it from the `.maps` section.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type},
    helpers::generated::bpf_task_storage_get,
};

#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are placeholders the loader reads from BTF; nothing dereferences them.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The value stored for `task` (a trusted `struct task_struct *` from a BTF program's
    /// arguments), created zeroed when `create` is set and it does not exist yet.
    #[inline(always)]
    pub fn get(&self, task: *mut c_void, create: bool) -> Option<&mut T> {
        let flags = if create {
            BPF_LOCAL_STORAGE_GET_F_CREATE as u64
        } else {
            0
        };
        let map = ptr::from_ref(self).cast_mut().cast();
        // SAFETY: the verifier checks that `task` is a trusted task pointer; the helper
        // returns null or a pointer to this task's value, valid for the program's run.
        let value = unsafe { bpf_task_storage_get(map, task.cast(), ptr::null_mut(), flags) };
        // SAFETY: see above; programs on one task's value are serialised by the scheduler
        // hooks' context (the task is being woken or switched, not both at once on two CPUs).
        unsafe { value.cast::<T>().as_mut() }
    }
}
