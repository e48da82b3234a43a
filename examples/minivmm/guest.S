/*
 * The minivmm guest: a small x86 program in flat 32-bit protected mode
 * that behaves like a confidential guest's memory manager. It keeps its
 * own record of every page's state, makes seeded pseudo-random conversions
 * of 1 to 512 pages (lazy accept, SWIOTLB bounce buffers, DMA buffers,
 * balloon), writes a known pattern into every page it owns, and asks its
 * VMM for each change: shared and private through KVM_HC_MAP_GPA_RANGE
 * (where the VMM says the hypercall exit works), everything else through a
 * page-state change request in a shared page (the SEV-SNP GHCB's shape).
 * At the end it asks the VMM for the state of every page, checks it against
 * its record, checks the content of every page it owns, and reports.
 * Everything it needs across a live migration is in its RAM and registers.
 */
#include "guest_abi.h"

#define KVM_HC_MAP_GPA_RANGE 12
#define MAP_GPA_ENCRYPTED 0x10

        .intel_syntax noprefix
        .code32
        .text
        .globl _start
_start:
        mov esp, GUEST_STACK_TOP
        cmp dword ptr [GUEST_PARAMS + P_MAGIC], PARAMS_MAGIC
        jne bad_params
        mov eax, [GUEST_PARAMS + P_SEED]
        test eax, eax
        jnz 1f
        mov eax, 0x9e3779b9             /* xorshift must not start at 0 */
1:      mov [rng_state], eax

        /* The record: firmware pages private but the shared request page
         * and run buffer; the rest discarded (not yet accepted). */
        xor edi, edi
init_record:
        cmp edi, [GUEST_PARAMS + P_PAGES]
        jae init_done
        mov eax, 2
        cmp edi, [GUEST_PARAMS + P_CONV_BASE]
        jae 2f
        mov eax, 1
        cmp edi, GUEST_REQ / GUEST_PAGE
        je 3f
        cmp edi, GUEST_RUNS / GUEST_PAGE
        jb 2f
        cmp edi, GUEST_RUNS_END / GUEST_PAGE
        jae 2f
3:      xor eax, eax
2:      mov [GUEST_RECORD + edi * 4], eax
        inc edi
        jmp init_record
init_done:

        /* Empty requests, for the VMM to time an exit's round trip. */
        mov ecx, [GUEST_PARAMS + P_CALIBRATE]
        test ecx, ecx
        jz 2f
1:      mov dx, PORT_NOP
        out dx, al
        loop 1b
2:
        mov eax, PHASE_CONVERTING
        mov dx, PORT_PHASE
        out dx, eax

convert_loop:
        mov eax, [done]
        cmp eax, [GUEST_PARAMS + P_OPS]
        jae verify

        /* Size: 1 page (1/2), 16 (1/4), 128 (3/16) or 512 (1/16). */
        call rng
        and eax, 15
        mov esi, 1
        cmp eax, 8
        jb 1f
        mov esi, 16
        cmp eax, 12
        jb 1f
        mov esi, 128
        cmp eax, 15
        jb 1f
        mov esi, 512
1:      mov [cur_pages], esi

        /* State: shared, private or discarded, alike. */
        call rng
        xor edx, edx
        mov ebx, 3
        div ebx
        mov [cur_state], edx

        /* Where: a slot of its size in the converted area. */
        mov eax, [GUEST_PARAMS + P_PAGES]
        sub eax, [GUEST_PARAMS + P_CONV_BASE]
        xor edx, edx
        div esi
        mov ecx, eax                    /* slots */
        call rng
        xor edx, edx
        div ecx
        mov eax, edx
        mul esi
        add eax, [GUEST_PARAMS + P_CONV_BASE]
        mov [cur_pfn], eax

        call request_conversion
        test eax, eax
        jnz convert_refused
        inc dword ptr [done]

        /* Record the new state, and write the pattern into owned pages. */
        mov ebx, [done]                 /* the stamp */
        mov edi, [cur_pfn]
        mov ecx, [cur_pages]
record_loop:
        mov eax, ebx
        shl eax, REC_STAMP_SHIFT
        or eax, [cur_state]
        mov [GUEST_RECORD + edi * 4], eax
        cmp dword ptr [cur_state], 2
        je 1f
        mov edx, edi
        shl edx, 12
        mov [edx], edi
        mov [edx + 4], ebx
        mov eax, ebx
        not eax
        mov [edx + GUEST_PAGE - 4], eax
1:      inc edi
        loop record_loop
        jmp convert_loop

convert_refused:
        mov [GUEST_REQ + V_CONVERT_STATUS], eax
        mov dword ptr [kind], 3
        mov eax, [cur_pfn]
        mov [first_pfn], eax
        mov eax, [cur_state]
        mov [expected], eax
        jmp report

/* eax = 0 if the VMM made the change, else its status. */
request_conversion:
        mov eax, [cur_state]
        cmp eax, 2
        je via_request_page
        test dword ptr [GUEST_PARAMS + P_FLAGS], FLAG_HYPERCALL
        jz via_request_page
        xor edx, edx
        cmp eax, 1
        jne 1f
        mov edx, MAP_GPA_ENCRYPTED
1:      mov ebx, [cur_pfn]
        shl ebx, 12
        mov ecx, [cur_pages]
        mov eax, KVM_HC_MAP_GPA_RANGE
        test dword ptr [GUEST_PARAMS + P_FLAGS], FLAG_VMMCALL
        jz 2f
        vmmcall
        ret
2:      vmcall
        ret
via_request_page:
        mov dword ptr [GUEST_REQ + REQ_COUNT], 1
        mov dword ptr [GUEST_REQ + REQ_STATUS], 0xffffffff
        mov dword ptr [GUEST_REQ + REQ_DONE], 0
        mov eax, [cur_pfn]
        mov [GUEST_REQ + REQ_ENTRIES], eax
        mov eax, [cur_pages]
        mov [GUEST_REQ + REQ_ENTRIES + 4], eax
        mov eax, [cur_state]
        mov [GUEST_REQ + REQ_ENTRIES + 8], eax
        mov dword ptr [GUEST_REQ + REQ_ENTRIES + 12], 0
        mov dx, PORT_PSC
        out dx, al
        mov eax, [GUEST_REQ + REQ_STATUS]
        cmp dword ptr [GUEST_REQ + REQ_DONE], 1
        je 1f
        test eax, eax
        jnz 1f
        mov eax, 0xffffffff             /* not done, yet no error: refused */
1:      ret

/* The end: ask for every page's state and check it, then the content. */
verify:
        mov eax, PHASE_VERIFYING
        mov dx, PORT_PHASE
        out dx, eax
        xor edi, edi                    /* the next pfn expected */
query_loop:
        cmp edi, [GUEST_PARAMS + P_PAGES]
        jae check_content
        mov [GUEST_REQ + Q_START], edi
        mov dword ptr [GUEST_REQ + Q_COUNT], 0
        mov dx, PORT_QUERY
        out dx, al
        mov ecx, [GUEST_REQ + Q_COUNT]
        test ecx, ecx
        jz query_broken
        cmp ecx, RUNS_MAX
        ja query_broken
        add [runs], ecx
        mov esi, GUEST_RUNS
run_loop:
        mov ebx, [esi]                  /* first pfn */
        cmp ebx, edi
        jne query_broken
        mov edx, [esi + 4]              /* pages */
        test edx, edx
        jz query_broken
        add edx, ebx
        jc query_broken
        cmp edx, [GUEST_PARAMS + P_PAGES]
        ja query_broken
page_loop:
        mov eax, [GUEST_RECORD + ebx * 4]
        and eax, REC_STATE_MASK
        cmp eax, [esi + 8]
        je 1f
        inc dword ptr [state_bad]
        cmp dword ptr [kind], 0
        jne 1f
        mov dword ptr [kind], 1
        mov [first_pfn], ebx
        mov [expected], eax
        mov eax, [esi + 8]
        mov [got], eax
1:      inc dword ptr [pages]
        inc ebx
        cmp ebx, edx
        jb page_loop
        mov edi, ebx
        add esi, 16
        loop run_loop
        jmp query_loop

query_broken:                           /* an answer that does not fit */
        inc dword ptr [state_bad]
        cmp dword ptr [kind], 0
        jne check_content
        mov dword ptr [kind], 1
        mov [first_pfn], edi
        mov dword ptr [expected], 0xffffffff
        mov dword ptr [got], 0xffffffff

check_content:
        mov edi, [GUEST_PARAMS + P_CONV_BASE]
content_loop:
        cmp edi, [GUEST_PARAMS + P_PAGES]
        jae report
        mov eax, [GUEST_RECORD + edi * 4]
        mov ebx, eax
        and ebx, REC_STATE_MASK
        cmp ebx, 2
        je 2f
        shr eax, REC_STAMP_SHIFT
        mov edx, edi
        shl edx, 12
        cmp [edx], edi
        jne 3f
        cmp [edx + 4], eax
        jne 3f
        not eax
        cmp [edx + GUEST_PAGE - 4], eax
        jne 3f
        inc dword ptr [content_pages]
        jmp 2f
3:      inc dword ptr [content_bad]
        cmp dword ptr [kind], 0
        jne 2f
        mov dword ptr [kind], 2
        mov [first_pfn], edi
        mov eax, [GUEST_RECORD + edi * 4]
        shr eax, REC_STAMP_SHIFT
        mov [expected], eax             /* the stamp its record holds */
        mov eax, [edx + 4]
        mov [got], eax                  /* the stamp word in the page */
2:      inc edi
        jmp content_loop

report:
        xor eax, eax
        cmp dword ptr [kind], 0
        jne 1f
        inc eax
1:      mov [GUEST_REQ + V_OK], eax
        mov eax, [pages]
        mov [GUEST_REQ + V_PAGES], eax
        mov eax, [runs]
        mov [GUEST_REQ + V_RUNS], eax
        mov eax, [done]
        mov [GUEST_REQ + V_CONVERSIONS], eax
        mov eax, [state_bad]
        mov [GUEST_REQ + V_STATE_BAD], eax
        mov eax, [content_bad]
        mov [GUEST_REQ + V_CONTENT_BAD], eax
        mov eax, [first_pfn]
        mov [GUEST_REQ + V_FIRST_PFN], eax
        mov eax, [expected]
        mov [GUEST_REQ + V_EXPECTED], eax
        mov eax, [got]
        mov [GUEST_REQ + V_GOT], eax
        mov eax, [kind]
        mov [GUEST_REQ + V_KIND], eax
        mov eax, [content_pages]
        mov [GUEST_REQ + V_CONTENT_PAGES], eax
        mov dx, PORT_REPORT
        out dx, al
halt:   hlt
        jmp halt

bad_params:
        mov dword ptr [GUEST_REQ + V_OK], 0
        mov dword ptr [GUEST_REQ + V_KIND], 4
        mov dx, PORT_REPORT
        out dx, al
        jmp halt

/* xorshift32: eax = the next number (edx clobbered). */
rng:
        mov eax, [rng_state]
        mov edx, eax
        shl edx, 13
        xor eax, edx
        mov edx, eax
        shr edx, 17
        xor eax, edx
        mov edx, eax
        shl edx, 5
        xor eax, edx
        mov [rng_state], eax
        ret

/* The guest's variables live in its code page (no paging: it is writable). */
        .balign 4
rng_state:      .long 0
done:           .long 0
cur_pfn:        .long 0
cur_pages:      .long 0
cur_state:      .long 0
pages:          .long 0
runs:           .long 0
content_pages:  .long 0
state_bad:      .long 0
content_bad:    .long 0
kind:           .long 0
first_pfn:      .long 0
expected:       .long 0
got:            .long 0
